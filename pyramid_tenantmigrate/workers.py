"""The one job runner: jobs from one queue, on threads with a connection each.

Used to migrate tenants and to read their versions. Each thread opens its
own connection and takes the next job when it is done with one, so a slow
job never leaves others waiting behind a static split. A thread that
cannot open a connection (``max_connections`` reached, a role's
connection limit) gives up its place with a warning and the others go on;
only when no connection can be opened at all does the run stop.
"""
import queue
import threading


class WorkerPool:
    """Run ``work(worker, job)`` for every job on up to ``workers`` threads.

    ``connect()`` opens a worker's connection. ``work`` may call
    ``worker.reconnect()`` after losing its connection; when that fails,
    the pool stops (``aborted`` says why). ``should_stop()`` is asked
    before each job: a reason (string) stops the pool. After :meth:`run`,
    ``leftover`` holds the jobs not started, ``warnings`` what went wrong
    with connections, ``opened`` how many threads had one.
    """

    def __init__(self, connect, workers, name="tenantmigrate-worker",
                 should_stop=None):
        self.connect = connect
        self.workers = max(1, int(workers))
        self.name = name
        self.should_stop = should_stop or (lambda: None)
        self.aborted = None
        self.warnings = []
        self.leftover = []
        self.opened = 0
        self.errors = []
        #: The first exception a thread got opening its connection.
        self.connect_error = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failed_to_open = []

    def stop(self, reason):
        """Stop taking jobs (jobs running now finish)."""
        with self._lock:
            if self.aborted is None:
                self.aborted = reason
        self._stop.set()

    def run(self, jobs, work):
        jobs = list(jobs)
        pending = queue.SimpleQueue()
        for job in jobs:
            pending.put(job)
        count = min(self.workers, len(jobs))
        threads = [threading.Thread(target=self._thread,
                                    args=(pending, work),
                                    name=f"{self.name}-{n}", daemon=True)
                   for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        while True:
            try:
                self.leftover.append(pending.get_nowait())
            except queue.Empty:
                break
        if self._failed_to_open:
            error = self._failed_to_open[0]
            self.warnings.append(
                f"opened {self.opened} of {count} connections and went on "
                f"with {self.opened}: {error}")
            if not self.opened and self.aborted is None:
                self.aborted = f"no connection could be opened: {error}"
        if self.errors:
            raise self.errors[0]
        return self

    def _thread(self, pending, work):
        worker = _Worker(self)
        try:
            worker.connection = self.connect()
        except Exception as exc:
            with self._lock:
                if self.connect_error is None:
                    self.connect_error = exc
                self._failed_to_open.append(" ".join(str(
                    getattr(exc, "orig", None) or exc).split()))
            return
        with self._lock:
            self.opened += 1
        try:
            while not self._stop.is_set():
                reason = self.should_stop()
                if reason:
                    self.stop(reason)
                    return
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    work(worker, job)
                except BaseException as exc:  # handed to the caller
                    pending.put(job)
                    with self._lock:
                        self.errors.append(exc)
                    self._stop.set()
                    return
        finally:
            worker.close()


class _Worker:
    """One thread's connection."""

    def __init__(self, pool):
        self.pool = pool
        self.connection = None

    def reconnect(self):
        """Replace a lost connection; stop the pool (and raise) when the
        database cannot be reached."""
        self.close()
        try:
            self.connection = self.pool.connect()
        except Exception as exc:
            message = " ".join(str(getattr(exc, "orig", None) or exc).split())
            self.pool.stop(f"the database went away: {message}")
            raise DatabaseGone(message) from None
        return self.connection

    def close(self):
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                pass
            self.connection = None


class DatabaseGone(Exception):
    """A worker lost its connection and could not open another one."""
