"""The one retry policy: exponential back-off with jitter.

Used wherever this package tries again after waiting for someone else:
a tenant whose table an application transaction holds (lock timeout,
deadlock), capture waiting on a shared table, a run waiting for sign-ups
to finish. Jitter spreads the retries of many tenants, so they do not line
up behind the same lock again.
"""
import random
import time
from dataclasses import dataclass

#: SQLSTATEs worth trying again after a pause: another transaction held
#: what we needed.
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
RETRYABLE = frozenset({LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED})


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` further attempts after the first, the n-th waiting
    ``base * 2**(n-1)`` seconds, times a random factor in [0.5, 1.5)."""

    retries: int = 3
    base: float = 0.5

    def delay(self, attempt, rand=random.random):
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return self.base * (2 ** (attempt - 1)) * (0.5 + rand())

    def should_retry(self, attempt):
        """Whether retry number ``attempt`` (1-based) is allowed."""
        return attempt <= self.retries

    def wait(self, attempt, sleep=time.sleep):
        sleep(self.delay(attempt))
