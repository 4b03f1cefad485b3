"""Executor backends behind one interface: a local process pool, or a Dask cluster.

Both take a picklable task function (a module-level function such as
``driftwatch.pipeline.ccd.reduce_ccd``) and a task (:mod:`driftwatch.tasks`), and return a
future with ``add_done_callback``, ``result()`` and ``exception()``. The function runs wrapped
in :func:`run_task`, which reports which worker ran it and for how long.

- :class:`LocalExecutor`: ``concurrent.futures.ProcessPoolExecutor`` with ``workers.count``
  processes started by *forkserver* (no thread or lock of the service is forked into a worker),
  recycled after ``workers.max_tasks_per_worker`` tasks. A worker that dies (segfault, OOM kill)
  breaks the pool: every future in flight gets ``BrokenProcessPool``; :meth:`restart` builds a
  new pool. The dispatcher never queues more tasks than there are workers: CPython 3.11-3.14
  can deadlock when ``max_tasks_per_child`` recycles a worker while a backlog waits in the pool
  (python/cpython#115634), and a job is 'running' in the database only while a worker has it.
- :class:`DaskExecutor`: ``distributed.Client`` on ``workers.dask_scheduler`` (a
  ``LocalCluster`` of processes when it is 'local'); tasks are submitted with ``pure=False`` so a
  resubmitted job runs again instead of returning a cached result. Dask itself reschedules the
  task of a worker that died, and raises ``KilledWorker`` after too many deaths.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import process as _cf_process
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from driftwatch.config import WorkersConfig

log = logging.getLogger(__name__)


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()   # LocalExecutors not yet shut down
# Pools that broke and were replaced, or were stopped without waiting: (manager thread, the
# pool's worker processes by pid).
_RETIRED_MANAGERS: list[tuple[threading.Thread, dict]] = []


def _retire(manager: threading.Thread, processes: dict) -> None:
    """Remember a stopped pool's manager thread for the exit hook; forget those that ended."""
    _RETIRED_MANAGERS[:] = [(t, p) for t, p in _RETIRED_MANAGERS if t.is_alive()]
    _RETIRED_MANAGERS.append((manager, processes))


def _release_stuck_managers(timeout_s: float = 5.0) -> None:
    """At interpreter exit: let the retired pools' manager threads end, but never wait forever.

    CPython 3.11's manager thread of a pool that broke (a worker killed) can block for good in
    ``terminate_broken``, joining a worker whose exit the fork server never reports; the
    interpreter's exit would then wait on it forever (seen in the poison-job test, about one
    run in ten). After ``timeout_s``, such a thread is dropped from the joins at exit; its
    processes are already gone.
    """
    deadline = time.monotonic() + timeout_s
    for thread, processes in _RETIRED_MANAGERS:
        thread.join(max(0.0, deadline - time.monotonic()))
        if not thread.is_alive():
            continue
        log.warning("a retired worker pool's manager thread is stuck; not waiting for it")
        _cf_process._threads_wakeups.pop(thread, None)  # noqa: SLF001
        lock = getattr(thread, "_tstate_lock", None)
        with threading._shutdown_locks_lock:  # noqa: SLF001
            threading._shutdown_locks.discard(lock)  # noqa: SLF001
        # multiprocessing's own exit hook joins the same process objects: not those either
        for proc in list(processes.values()):
            multiprocessing.process._children.discard(proc)  # noqa: SLF001


# Runs before concurrent.futures' own exit hook (those hooks run last registered first), which
# joins every manager thread without a timeout.
threading._register_atexit(_release_stuck_managers)  # noqa: SLF001
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class TaskOutcome:
    """What :func:`run_task` returns: the function's summary and where and how it ran."""

    summary: Any
    worker: str
    seconds: float


def run_task(fn: Callable[[Any], Any], task: Any) -> TaskOutcome:
    """Run ``fn(task)`` in a worker, timing it and naming the worker (``host:pid``)."""
    t0 = time.perf_counter()
    summary = fn(task)
    return TaskOutcome(summary, f"{socket.gethostname()}:{os.getpid()}", time.perf_counter() - t0)


class FutureLike(Protocol):
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...
    def result(self, timeout: float | None = None) -> Any: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def cancel(self) -> bool: ...


class Executor(Protocol):
    """The interface the dispatcher drives."""

    name: str

    @property
    def capacity(self) -> int:
        """How many tasks may be in flight at once."""

    def submit(self, fn: Callable[[Any], Any], task: Any) -> FutureLike: ...

    def is_lost_worker(self, exc: BaseException) -> bool:
        """True when ``exc`` means a worker died under the task (not an error of the task)."""

    def needs_restart(self) -> bool: ...

    def restart(self) -> None: ...

    def shutdown(self, wait: bool = True) -> None: ...


class LocalExecutor:
    """A pool of local worker processes."""

    name = "local"

    def __init__(self, count: int, max_tasks_per_worker: int = 50,
                 preload: tuple[str, ...] = ()) -> None:
        self.count = count
        self.max_tasks_per_worker = max_tasks_per_worker
        # One BLAS/OpenMP thread per worker: workers.count processes already fill the cores,
        # and more threads per process only oversubscribe them. Inherited by the fork server
        # when it starts (Dask's nanny does the same for its workers).
        for var in _THREAD_VARS:
            os.environ.setdefault(var, "1")
        self._ctx = multiprocessing.get_context("forkserver")
        # Modules imported once in the fork server, so a recycled worker starts in milliseconds.
        self._ctx.set_forkserver_preload(["driftwatch.service.executor", *preload])
        self._pool = self._new_pool()
        self._broken = False
        _LIVE_POOLS.add(self)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.count, mp_context=self._ctx,
                                   max_tasks_per_child=self.max_tasks_per_worker)

    @property
    def capacity(self) -> int:
        return self.count

    def submit(self, fn: Callable[[Any], Any], task: Any) -> FutureLike:
        try:
            return self._pool.submit(run_task, fn, task)
        except BrokenProcessPool:
            self._broken = True
            raise
        except (OSError, EOFError) as exc:
            # A pool whose worker just died can fail to start the replacement (its fork-server
            # connection or a pipe already closed) before it knows it is broken: the same case.
            self._broken = True
            raise BrokenProcessPool(f"the pool cannot start a worker: {exc}") from exc

    def is_lost_worker(self, exc: BaseException) -> bool:
        if isinstance(exc, BrokenProcessPool):
            self._broken = True
            return True
        return False

    def needs_restart(self) -> bool:
        return self._broken

    def restart(self) -> None:
        log.warning("a worker process died: starting a new pool of %d", self.count)
        manager = getattr(self._pool, "_executor_manager_thread", None)
        if manager is not None:
            _retire(manager, self._pool._processes)  # noqa: SLF001
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self._broken = False

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (tests kill one)."""
        return [p.pid for p in list(self._pool._processes.values()) if p.pid]  # noqa: SLF001

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool; without ``wait`` the workers are terminated (their jobs were handed
        back to the queue by the dispatcher, and products are only ever renamed into place)."""
        self._stop_pool(self._pool, wait)
        _LIVE_POOLS.discard(self)

    def _stop_pool(self, pool: ProcessPoolExecutor, wait: bool) -> None:
        manager = getattr(pool, "_executor_manager_thread", None)
        processes = pool._processes or {}  # noqa: SLF001 - shutdown() drops the pool's reference
        if not wait:
            for proc in list(pool._processes.values()):  # noqa: SLF001
                if proc.is_alive():
                    proc.terminate()
        pool.shutdown(wait=wait, cancel_futures=True)
        if not wait and manager is not None:
            # Seen rarely on CPython 3.11: an idle worker that the pool's manager thread waits
            # for but never told to stop, which would hang the interpreter's exit (and a cron
            # job with it). Kill such strays: children of our fork server that belong to no
            # other live pool of this process.
            manager.join(timeout=5.0)
            if manager.is_alive():
                self._kill_strays()
                manager.join(timeout=5.0)
            if manager.is_alive():
                _retire(manager, processes)

    def _kill_strays(self) -> None:
        import psutil
        from multiprocessing import forkserver

        server = getattr(forkserver._forkserver, "_forkserver_pid", None)  # noqa: SLF001
        if not server:
            return
        others = {pid for ex in list(_LIVE_POOLS) if ex is not self for pid in ex.worker_pids()}
        try:
            children = psutil.Process(server).children()
        except psutil.Error:
            return
        for child in children:
            if child.pid not in others:
                log.warning("killing worker process %d left behind by the pool", child.pid)
                try:
                    child.kill()
                except psutil.Error:
                    pass


class DaskExecutor:
    """Tasks on a Dask distributed cluster."""

    name = "dask"

    def __init__(self, scheduler: str, n_workers: int = 2) -> None:
        from distributed import Client, LocalCluster

        self._cluster = None
        if scheduler == "local":
            self._cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                         processes=True, dashboard_address=None)
            self.client = Client(self._cluster)
        else:
            self.client = Client(scheduler)
        self._n_workers = n_workers

    @property
    def capacity(self) -> int:
        try:
            threads = sum(self.client.nthreads().values())
        except Exception:  # scheduler briefly unreachable: keep going with the configured size
            threads = self._n_workers
        return max(2 * threads, 1)

    def submit(self, fn: Callable[[Any], Any], task: Any) -> FutureLike:
        return self.client.submit(run_task, fn, task, pure=False)

    def is_lost_worker(self, exc: BaseException) -> bool:
        return type(exc).__name__ == "KilledWorker"

    def needs_restart(self) -> bool:
        return False

    def restart(self) -> None:  # Dask replaces workers itself
        pass

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (tests kill one)."""
        return self.client.run(os.getpid)

    def shutdown(self, wait: bool = True) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(workers: WorkersConfig, *, count: int | None = None,
                  preload: tuple[str, ...] = ()) -> LocalExecutor | DaskExecutor:
    """Build the backend named by ``workers.backend`` (``count`` overrides workers.count)."""
    n = count or workers.count
    if workers.backend == "dask":
        return DaskExecutor(workers.dask_scheduler, n_workers=n)
    return LocalExecutor(n, workers.max_tasks_per_worker, preload=preload)
