"""Progress of a run on the terminal.

On a TTY, one line redrawn in place: done, failed, remaining, rate, ETA.
Otherwise (CI logs, pipes) quiet, line-based output: each failure as it
happens, and a status line every ``interval`` seconds of a long run.
"""
import time


class Progress:
    """Called by commands.run with each schema's result."""

    def __init__(self, stream, tty, verbose=False, interval=10.0):
        self.stream = stream
        self.tty = tty
        self.verbose = verbose
        self.interval = interval
        self._reset("", 0)

    def _reset(self, branch, total):
        self.branch = branch
        self.total = total
        self.done = self.failed = 0
        self.started = self.last_line = time.monotonic()
        self.drawn = False

    def planned(self, branch, pending):
        """A branch is about to run ``pending`` schemas."""
        self.finish_line()
        self._reset(branch, pending)

    def __call__(self, branch, result):
        if result.ok:
            self.done += 1
        else:
            self.failed += 1
            where = (f" at revision {result.failed_revision}"
                     if result.failed_revision else "")
            self._line(f"FAILED {branch} {result.schema}{where}: "
                       f"{result.error}")
        if self.verbose and result.ok:
            self._line(f"{branch} {result.schema}: {result.status} "
                       f"{','.join(result.from_heads) or 'base'} -> "
                       f"{','.join(result.to_heads) or 'base'}")
        now = time.monotonic()
        if self.tty:
            if now - self.last_line >= 0.1 or self._remaining() == 0:
                self._draw(now)
        elif now - self.last_line >= self.interval and self._remaining():
            self._line(self._status(now))

    def _remaining(self):
        return max(self.total - self.done - self.failed, 0)

    def _status(self, now):
        finished = self.done + self.failed
        elapsed = max(now - self.started, 1e-6)
        rate = finished / elapsed
        eta = self._remaining() / rate if rate else 0
        return (f"{self.branch}: {finished}/{self.total} "
                f"({self.done} done, {self.failed} failed, "
                f"{self._remaining()} to go) {rate:.0f}/s, ETA {eta:.0f}s")

    def _draw(self, now):
        self.stream.write("\r\x1b[K" + self._status(now))
        self.stream.flush()
        self.drawn = True
        self.last_line = now

    def _line(self, text):
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_line = time.monotonic()

    def finish_line(self):
        """End a drawn bar so that what follows starts on a new line."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
