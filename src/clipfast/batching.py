"""Dynamic batching: items from concurrent requests, run together in one call, each request's rows handed back.

A server thread calls :meth:`DynamicBatcher.submit` with one request's items and blocks until that request's rows
are ready. One worker thread per batcher takes items from the front of the queue, up to ``max_batch_size`` of them
or whatever arrived within ``max_wait_ms`` of the oldest one, whichever comes first, and runs them in one call of
``run`` (one model call). Requests admitted and still being decoded are waited for a little longer (at most as long
as the last call took), so that clients who sent together are not split over two calls. A request larger than a batch is split over several calls; a batch may hold the tail of
one request and the head of the next, but each request only ever gets its own rows back, in its own order.

The queue is bounded in items: :meth:`admit` reserves room for a request before the server decodes it, and refuses
with :class:`QueueFull` (which carries a retry delay) when the room is taken, so memory stays bounded under load.
Several batchers may share one ``lock`` (one model call at a time: on a CPU each call already uses every core).

Example:
    >>> batcher = DynamicBatcher(lambda items: [x * 2 for x in items], max_batch_size=8, max_wait_ms=1)
    >>> batcher.submit([1, 2, 3])
    [2, 4, 6]
    >>> batcher.close()
"""

from __future__ import annotations

import collections
import math
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from clipfast.errors import ClipfastError

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_QUEUE = 512  # items per modality: 16 batches of 32; 512 images of pixels are ~300 MB at 224 px


class QueueFull(ClipfastError):
    """The batcher's queue has no room for a request; ``retry_after`` is a suggested wait in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Job:
    """One request's items in a batcher's queue; :meth:`result` waits for their rows."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)
        self.taken = 0  # items handed to a batch so far
        self.rows: list[Any] = [None] * len(self.items)
        self.done = 0
        self.error: BaseException | None = None
        self.arrived = time.monotonic()
        self.finished = threading.Event()

    def result(self) -> list[Any]:
        """The rows of this job's items, in order, once every one has run (or the error of its batch)."""
        self.finished.wait()
        if self.error is not None:
            raise self.error
        return self.rows


class DynamicBatcher:
    """Runs ``run(items) -> rows`` (``len(rows) == len(items)``, indexable) over items of concurrent requests.

    Args:
        run: the batched call, e.g. a model's embedding of a list of texts; row ``i`` belongs to item ``i``.
        max_batch_size: most items per call (1 turns batching off: one call per item).
        max_wait_ms: how long the oldest waiting item may wait for others before its batch runs anyway.
        max_queue: most items admitted and not yet answered (waiting, decoding or running).
        lock: held around every call of ``run``; batchers sharing one never run at the same time.
        name: what the worker thread and the errors call this batcher.
    """

    def __init__(self, run: Callable[[list[Any]], Any], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_queue: int = DEFAULT_MAX_QUEUE,
                 lock: Any = None, name: str = "batcher") -> None:
        self.run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000
        self.max_queue = max(1, int(max_queue))
        self.name = name
        self._lock = lock if lock is not None else threading.Lock()
        self._cond = threading.Condition()
        self._jobs: collections.deque[Job] = collections.deque()
        self._admitted = 0  # items reserved by admit() and not yet released
        # items admitted and not yet queued, by request thread: their requests are still being decoded, and a
        # batch that is not full waits for them (up to a bound) instead of leaving them for the next call
        self._incoming: dict[int, int] = {}
        self._last_call = 0.0  # seconds the last call of run took
        self._closed = False
        self._item_seconds = 0.0  # running mean of a call's seconds per item, for Retry-After
        self.calls = 0  # model calls made, and the items they held (for tests and /info)
        self.items_run = 0
        self._worker = threading.Thread(target=self._loop, name=f"clipfast-{name}", daemon=True)
        self._worker.start()

    # -- the request side -------------------------------------------------------------------------------------

    @contextmanager
    def admit(self, count: int) -> Iterator[None]:
        """Reserve queue room for ``count`` items for the duration of the ``with`` block, or raise
        :class:`QueueFull`. An empty queue admits any request, so one larger than ``max_queue`` still runs."""
        with self._cond:
            if self._closed:
                raise QueueFull(f"The server is shutting down; the {self.name} queue takes no new work.", 5)
            if self._admitted and self._admitted + count > self.max_queue:
                raise QueueFull(f"The {self.name} queue is full ({self._admitted} of {self.max_queue} items "
                                f"waiting); retry later.", self._retry_after())
            self._admitted += count
            thread = threading.get_ident()
            self._incoming[thread] = self._incoming.get(thread, 0) + count
        try:
            yield
        finally:
            with self._cond:
                self._admitted -= count
                left = self._incoming.pop(thread, 0) - count
                if left > 0:  # (an admission around this one, in the same thread)
                    self._incoming[thread] = left
                self._cond.notify_all()

    def submit(self, items: Sequence[Any]) -> list[Any]:
        """Run ``items`` (one request's) in the next batches and return their rows, in order.

        Blocks until every row is ready; an error raised by ``run`` is raised here in each request it touched.
        """
        return self.enqueue(items).result()

    def enqueue(self, items: Sequence[Any]) -> Job:
        """Queue ``items`` without waiting: a request with texts and images queues both, then waits for both."""
        job = Job(items)
        if not job.items:
            job.finished.set()
            return job
        with self._cond:
            if self._closed:
                raise QueueFull(f"The server is shutting down; the {self.name} queue takes no new work.", 5)
            self._jobs.append(job)
            thread = threading.get_ident()
            if thread in self._incoming:
                self._incoming[thread] = max(0, self._incoming[thread] - len(job.items))
            self._cond.notify_all()
        return job

    def pending(self) -> int:
        """Items admitted and not yet answered."""
        with self._cond:
            return self._admitted

    def queued(self) -> int:
        """Items submitted and not yet taken into a batch."""
        with self._cond:
            return self._waiting()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work; jobs already queued still run. Waits up to ``timeout`` seconds for the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- the worker side --------------------------------------------------------------------------------------

    def _retry_after(self) -> int:
        """Seconds until the items now admitted have probably run (at least 1)."""
        return max(1, min(60, math.ceil(self._admitted * self._item_seconds)))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return  # closed and drained
                self._wait_for_company()
            with self._lock:  # items that arrive while another batcher's call runs join this batch
                with self._cond:
                    batch = self._take()
                self._run(batch)

    def _wait_for_company(self) -> None:
        """Hold the oldest queued item until the batch is full, or it has waited ``max_wait`` and no admitted
        request is still decoding; items on their way are waited for at most as long as the last call took
        (capped at 1 s), so that closed-loop clients who sent together run together."""
        oldest = self._jobs[0].arrived
        deadline, bound = oldest + self.max_wait, oldest + self.max_wait + min(1.0, self._last_call)
        while self._waiting() < self.max_batch_size and not self._closed:
            now = time.monotonic()
            coming = any(self._incoming.values()) and now < bound
            left = (bound if coming else deadline) - now
            if left <= 0:
                return
            self._cond.wait(left)

    def _waiting(self) -> int:
        return sum(len(job.items) - job.taken for job in self._jobs)

    def _take(self) -> list[tuple[Job, int, int]]:
        """(job, start, stop) slices from the front of the queue, at most ``max_batch_size`` items in all."""
        batch, room = [], self.max_batch_size
        while self._jobs and room:
            job = self._jobs[0]
            stop = min(len(job.items), job.taken + room)
            batch.append((job, job.taken, stop))
            room -= stop - job.taken
            job.taken = stop
            if stop == len(job.items):
                self._jobs.popleft()
        return batch

    def _run(self, batch: list[tuple[Job, int, int]]) -> None:
        """One call of ``run`` over the batch; rows (or the error) go back to their jobs."""
        items = [item for job, start, stop in batch for item in job.items[start:stop]]
        started = time.perf_counter()
        try:
            rows = self.run(items)
            if len(rows) != len(items):
                raise RuntimeError(f"{self.name}: run() returned {len(rows)} rows for {len(items)} items")
        except BaseException as err:  # handed to every request in this batch; the worker goes on
            for job, _, _ in batch:
                job.error = err
                job.finished.set()
            return
        self._last_call = time.perf_counter() - started
        seconds = self._last_call / len(items)
        self._item_seconds = seconds if not self.calls else 0.8 * self._item_seconds + 0.2 * seconds
        self.calls += 1
        self.items_run += len(items)
        offset = 0
        for job, start, stop in batch:
            job.rows[start:stop] = rows[offset:offset + stop - start]
            offset += stop - start
            job.done += stop - start
            if job.done == len(job.items):
                job.finished.set()
