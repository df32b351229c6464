"""The one thread pool, and the few ways clipfast puts work on it.

Image loading (Pillow decodes without the GIL), downloads and per-image preprocessing all run on one process-wide
pool, created on first use. A :class:`Lane` bounds how many of one kind of task run at once, so that each kind
keeps the parallelism it was tuned for (8 images resized at once, up to 16 files decoded or downloaded) while
sharing the threads. Nothing here knows about images: callers pass their task functions.

Example:
    >>> ordered_map(len, ["a", "bb", "ccc"])
    [1, 2, 3]
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")

POOL_SIZE_LIMIT = 16  # the most threads the pool gets: downloads and decodes want up to this many
IMAGE_TASKS_LIMIT = 8  # per-image preprocessing tasks run at once: more only adds memory traffic

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def cpu_count() -> int:
    """CPUs this process may use (at least 1)."""
    return os.cpu_count() or 1


def thread_pool() -> ThreadPoolExecutor:
    """The process-wide pool, created on first use with ``min(16, CPUs)`` threads."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(POOL_SIZE_LIMIT, cpu_count()), thread_name_prefix="clipfast")
        return _POOL


class Lane:
    """At most ``limit`` tasks of this lane run on the shared pool at once; the others wait in submission order.

    A finished task starts the next waiting one, so the lane never idles while work waits. The returned futures
    can be cancelled until their task starts.

    Example:
        >>> lane = Lane(2)
        >>> [f.result() for f in [lane.submit(abs, -1), lane.submit(abs, -2), lane.submit(abs, -3)]]
        [1, 2, 3]
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._waiting: deque[tuple[Future, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._running = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., R], *args: Any) -> Future:
        """Queue ``fn(*args)``; returns its future."""
        future: Future = Future()
        with self._lock:
            self._waiting.append((future, fn, args))
        self._start_waiting()
        return future

    def _start_waiting(self) -> None:
        """Start waiting tasks while the lane has room (cancelled ones are dropped)."""
        while True:
            with self._lock:
                if self._running >= self.limit or not self._waiting:
                    return
                future, fn, args = self._waiting.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                self._running += 1
            thread_pool().submit(self._run, future, fn, args)

    def _run(self, future: Future, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            with self._lock:
                self._running -= 1
            self._start_waiting()


_IMAGE_LANE: Lane | None = None


def image_lane() -> Lane:
    """The process-wide lane for per-image work (``min(8, CPUs)`` tasks at once)."""
    global _IMAGE_LANE
    with _POOL_LOCK:
        if _IMAGE_LANE is None:
            _IMAGE_LANE = Lane(min(IMAGE_TASKS_LIMIT, cpu_count()))
        return _IMAGE_LANE


def results_in_order(futures: list[Future]) -> list[Any]:
    """Each future's result, in order; the first failure is raised and the tasks not started are cancelled."""
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def ordered_map(work: Callable[[T], R], items: list[T], lane: Lane | None = None) -> list[R]:
    """``[work(item) for item in items]`` on the pool (through ``lane``, the image lane by default); in this
    thread for one item or one CPU. Results keep the order of ``items``; the first failure is raised."""
    if len(items) <= 1 or cpu_count() <= 1:
        return [work(item) for item in items]
    lane = lane or image_lane()
    return results_in_order([lane.submit(work, item) for item in items])


def batch_buffer(count: int, shape: tuple[int, ...], dtype: "torch.dtype") -> "torch.Tensor":
    """An uninitialised (count, *shape) batch whose rows pool threads fill. It is made outside any inference mode
    of the caller: threads don't inherit that mode, and writing into an inference tensor outside it fails."""
    import torch

    with torch.inference_mode(False):
        return torch.empty((count, *shape), dtype=dtype)


def submit_rows(items: list[T], task: Callable[[T, Any], Any], shape: tuple[int, ...] | None = None,
                dtype: Any = None, lane: Lane | None = None) -> tuple[list[Future], "torch.Tensor | None"]:
    """Queue ``task(item, row)`` per item on ``lane`` (the image lane by default). With a ``shape``, ``row`` is the
    item's row of one preallocated ``(len(items), *shape)`` batch, returned with the futures; else it is None."""
    out = batch_buffer(len(items), shape, dtype) if shape is not None else None
    lane = lane or image_lane()
    return [lane.submit(task, item, None if out is None else out[index]) for index, item in enumerate(items)], out


def run_ahead(chunks: Iterable[T], start: Callable[[T], tuple[list[Future], Any]], depth: int
              ) -> Iterator[tuple[T, tuple[list[Future], Any]]]:
    """Yield ``(chunk, start(chunk))`` in order, with up to ``depth`` later chunks started ahead of the one
    yielded. ``start`` returns ``(futures, anything)``: when the consumer stops early or fails, the futures of
    the chunks not yet yielded are cancelled."""
    pending: deque[tuple[T, tuple[list[Future], Any]]] = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, start(chunk)))
            if len(pending) > depth:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        for _, (futures, _) in pending:
            for future in futures:
                future.cancel()
