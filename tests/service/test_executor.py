"""Executor backends: the local pool recycles workers without hanging and survives a death."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from driftwatch.service.executor import LocalExecutor, TaskOutcome, run_task


def test_run_task_names_the_worker():
    out = run_task(abs, -3)
    assert isinstance(out, TaskOutcome) and out.summary == 3
    assert out.worker.endswith(f":{os.getpid()}") and out.seconds >= 0


def test_local_pool_recycles_workers_and_restarts_after_a_death():
    ex = LocalExecutor(2, max_tasks_per_worker=1)
    try:
        pids = set()
        for _ in range(3):  # never more tasks in flight than workers (see the module docstring)
            futures = [ex.submit(_getpid, None)
                       for _ in range(ex.capacity)]
            pids |= {f.result(timeout=60).summary for f in futures}
        assert len(pids) == 6  # one task per worker process: every task got a fresh one
        victim = ex.submit(_die, None)
        with pytest.raises(BrokenProcessPool):
            victim.result(timeout=60)
        assert ex.is_lost_worker(victim.exception()) and ex.needs_restart()
        ex.restart()
        assert ex.submit(_getpid, None).result(timeout=60).summary > 0
    finally:
        ex.shutdown(wait=True)


def _getpid(_task) -> int:
    return os.getpid()


def _die(_task) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_stuck_retired_manager_thread_does_not_hold_up_exit(monkeypatch):
    """The exit hook drops a retired pool's manager thread that never ends from the joins at
    exit (threading's and multiprocessing's); one that ends is simply joined."""
    import multiprocessing.process
    import threading

    from driftwatch.service import executor

    block = threading.Event()
    stuck = threading.Thread(target=block.wait, name="stuck-manager")
    done = threading.Thread(target=lambda: None, name="ended-manager")
    stuck.start()
    done.start()

    class FakeProcess:  # stands for a worker whose exit is never reported
        pass

    proc = FakeProcess()
    multiprocessing.process._children.add(proc)
    monkeypatch.setattr(executor, "_RETIRED_MANAGERS", [(stuck, {1: proc}), (done, {})])
    try:
        executor._release_stuck_managers(timeout_s=0.2)
        assert stuck._tstate_lock not in threading._shutdown_locks
        assert proc not in multiprocessing.process._children
        assert not done.is_alive()
    finally:
        block.set()
        stuck.join(5)
        multiprocessing.process._children.discard(proc)
