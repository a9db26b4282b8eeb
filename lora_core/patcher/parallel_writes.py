"""Slot writes spread over worker threads, each running torch ops with one intra-op thread.

Why not torch's own intra-op threads: every op of a slot write (a 4 MB block copy, an addmm)
is then split across the threads and joined again, some two thousand joins for an SD1.5 LoRA,
the per-slot Python work runs on one core while the other waits, and on a machine where another
process keeps a core busy a descheduled thread stalls every join (docs/BENCHMARKS.md, "Patcher:
measurements behind the design").
Whole slots per thread have none of that: torch ops release the GIL, so one thread's Python
overlaps the other's kernels, and a thread that gets no CPU for a while only leaves its share
of the queue to the others.

Work items are tensor groups (all changed slots of one tensor, e.g. the q/k/v rows of a fused
in_proj), so one tensor's backup is only ever created and filled by one thread. Items are taken
largest first from one shared queue, so the threads finish close together.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import torch

from lora_core.cpu_threads import torch_threads


def run_parallel(items: Sequence[Any], work: Callable[[Any, Any], None], workers: int,
                 make_state: Callable[[], Any] = lambda: None) -> None:
    """Call `work(item, state)` for every item on `workers` threads (the caller's is one of them).

    `state` is one `make_state()` per thread (scratch buffers). After the first exception no new
    item is started; items already running finish; then that exception is raised in the caller.
    torch's intra-op thread count is 1 for the duration (process-wide, restored on return).
    The helpers run in the caller's inference mode (thread-local in torch): weights a host made
    under `torch.inference_mode()` (Forge) can only be written in place inside it.
    """
    inference = torch.is_inference_mode_enabled()
    lock = threading.Lock()
    queue = iter(items)
    failure: list[BaseException] = []
    stop = threading.Event()

    def next_item():
        with lock:
            if stop.is_set():
                return None, False
            for item in queue:
                return item, True
            return None, False

    def loop():
        state = make_state()
        try:
            with torch.inference_mode(inference):
                while True:
                    item, ok = next_item()
                    if not ok:
                        return
                    work(item, state)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            with lock:
                failure.append(exc)
            stop.set()

    helpers = [threading.Thread(target=loop, name=f"lora_core-patch-{i}", daemon=True)
               for i in range(max(0, workers - 1))]
    with torch_threads(1):
        for t in helpers:
            t.start()
        try:
            loop()
        except BaseException as exc:  # KeyboardInterrupt between items in this thread
            failure.append(exc)
            stop.set()
        finally:
            stop_and_join(helpers, stop)
    if failure:
        raise failure[0]


def stop_and_join(threads: list[threading.Thread], stop: threading.Event) -> None:
    """Wait for every helper to finish its current item, even through a second Ctrl-C: the caller
    rolls back afterwards and must not race a thread still writing."""
    pending: BaseException | None = None
    for t in threads:
        while t.is_alive():
            try:
                t.join()
            except BaseException as exc:  # noqa: BLE001
                stop.set()
                pending = pending or exc
    if pending is not None:
        raise pending
