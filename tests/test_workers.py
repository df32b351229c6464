"""clipfast.workers: the one thread pool, lanes that bound each kind of work, ordered maps and run-ahead."""

from __future__ import annotations

import threading

import pytest
import torch

from clipfast.workers import Lane, batch_buffer, ordered_map, results_in_order, run_ahead, submit_rows, thread_pool


def test_one_pool_for_the_process():
    assert thread_pool() is thread_pool()


def test_ordered_map_keeps_order_and_raises_the_first_failure():
    assert ordered_map(lambda x: x * x, list(range(20))) == [x * x for x in range(20)]
    assert ordered_map(str, []) == [] and ordered_map(str, [7]) == ["7"]

    def fail_on_odd(x: int) -> int:
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    with pytest.raises(ValueError, match="odd 1"):
        ordered_map(fail_on_odd, [0, 1, 2, 3], Lane(2))


def test_lane_runs_at_most_its_limit_and_cancels_waiting_tasks():
    lane = Lane(1)
    gate = threading.Event()
    first = lane.submit(gate.wait, 30)
    second, third = lane.submit(lambda: "second"), lane.submit(lambda: "third")
    assert not second.done() and third.cancel()  # both wait behind the running task; a waiting one cancels
    gate.set()
    assert first.result(timeout=30) is True and second.result(timeout=30) == "second" and third.cancelled()


def test_lane_bounds_concurrency():
    lane, lock, state = Lane(2), threading.Lock(), {"now": 0, "most": 0}
    gates = [threading.Event() for _ in range(6)]

    def task(index: int) -> int:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        gates[index].wait(30)
        with lock:
            state["now"] -= 1
        return index

    futures = [lane.submit(task, i) for i in range(6)]
    for gate in gates:
        gate.set()
    assert results_in_order(futures) == list(range(6)) and state["most"] <= 2


def test_run_ahead_starts_depth_chunks_ahead_and_cancels_the_rest_when_closed():
    started = []
    gate = threading.Event()
    lane = Lane(1)

    def start(chunk: int):
        started.append(chunk)
        return [lane.submit(gate.wait, 30)], chunk

    jobs = run_ahead(iter(range(10)), start, depth=2)
    chunk, (futures, extra) = next(jobs)
    assert chunk == extra == 0 and started == [0, 1, 2]
    jobs.close()  # chunks 1 and 2 were started but never yielded: their waiting tasks are cancelled
    gate.set()
    assert futures[0].result(timeout=30) is True and started == [0, 1, 2]


def test_submit_rows_fills_one_batch_outside_inference_mode():
    with torch.inference_mode():
        futures, out = submit_rows([1, 2, 3], lambda item, row: row.fill_(item), shape=(2,), dtype=torch.int64)
        results_in_order(futures)
    assert not out.is_inference() and out.tolist() == [[1, 1], [2, 2], [3, 3]]
    futures, out = submit_rows(["a", "b"], lambda item, row: item.upper())
    assert out is None and results_in_order(futures) == ["A", "B"]
    assert batch_buffer(2, (3,), torch.float32).shape == (2, 3)
