"""The daemon loop (``driftwatch run``): watch, gate, plan, dispatch, record, notify systemd.

One thread does everything that touches the database (the single writer); the watchdog observer
thread only puts paths on a queue, and the workers only return summaries. Each turn of the loop:

1. take the paths the watcher queued and offer them to the completeness gate;
2. every ``watch.rescan_interval_s`` (and at start-up) offer the files on disk that the database
   does not know, or knows at another size (the reconciliation scan);
3. plan every file the gate accepted (:func:`driftwatch.service.planner.plan_file`), record
   corrupt files as failed, report files that never completed (once each);
4. let the dispatcher submit ready jobs (in planning order, so the oldest exposure first; an
   image waits for its DQ mask up to ``watch.dq_wait_s``) and record the results;
5. ping the systemd watchdog, only if the database answers and the worker pool is alive.

Signals: the first SIGTERM/SIGINT stops accepting files, lets running CCDs finish within
``workers.grace_period_s``, hands the rest back to 'queued' and exits 0; a second one exits at
once (the jobs still running are handed back to 'queued'). SIGHUP reloads the configuration.
``once`` (burst mode, for tests and catch-up) exits 0 when nothing is pending or running.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from driftwatch import __version__
from driftwatch.config import Config, load_config
from driftwatch.errors import ConfigError, DriftwatchError, InputError, UsageError
from driftwatch.service.gate import Gate, GateResult, Judged, expected_extnames, make_check
from driftwatch.service.sdnotify import Notifier
from driftwatch.service.watcher import Watcher
from driftwatch.store.models import (
    EXP_FAILED, QUEUED, ROLE_IGNORED, RUNNING, CcdJob, Exposure,
)

log = logging.getLogger(__name__)

DEFAULT_CCD_TASK = "driftwatch.pipeline.ccd:reduce_ccd"
#: Longest sleep of the loop when idle (bounds the reaction to signals and watchdog pings).
IDLE_TICK_S = 1.0
BUSY_TICK_S = 0.05
STATUS_EVERY_S = 10.0
#: On a clean stop, how long the Slack sender may take to deliver what is queued.
ALERTS_FLUSH_S = 3.0
#: A main loop failing on every turn for this long exits 1 (systemd restarts it).
MAX_FAILING_S = 120.0


class _Abort(BaseException):
    """Raised from the signal handler on a second stop signal: leave the loop at once."""


def load_callable(spec: str) -> Callable[[Any], Any]:
    """Import ``module:function`` (the worker task functions are named, so they pickle)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UsageError(f"task {spec!r}: expected module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DriftwatchError(f"the worker function {spec} is not available: {exc}") from None
    if not callable(fn):
        raise UsageError(f"task {spec!r} is not a function")
    return fn


@dataclass(frozen=True)
class RunOptions:
    once: bool = False
    ccd_task: str = DEFAULT_CCD_TASK
    #: In once mode, give up (exit 1) when work is still pending after this long.
    once_timeout_s: float = 3600.0


class Daemon:
    """The long-running service; :meth:`run` returns the exit code."""

    def __init__(self, cfg: Config, options: RunOptions = RunOptions(),
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.options = options
        self.notifier = notifier or Notifier()
        self.gate = self._make_gate(cfg)
        self.watcher: Watcher | None = None
        self.store = None
        self.dispatcher = None
        self.executor = None
        self.alerts = None
        self._stop = 0           # stop signals received
        self._reload = False
        self._next_scan = 0.0
        self._next_status = 0.0
        self._healthy = True
        self._failing_since: float | None = None

    # -------------------------------------------------------------------------------------
    # Set-up
    # -------------------------------------------------------------------------------------
    @staticmethod
    def _make_gate(cfg: Config) -> Gate:
        expected = expected_extnames(cfg.pipeline.ccds, cfg.pipeline.skip_ccds)
        return Gate(cfg.watch.settle_s, cfg.watch.complete_timeout_s,
                    check=make_check(expected, cfg.watch.verify_checksum),
                    trust_rename=cfg.watch.trust_rename)

    @staticmethod
    def _make_watcher(cfg: Config) -> Watcher:
        missing = [str(f) for f in cfg.paths.watch if not f.is_dir()]
        if missing:
            raise ConfigError(f"{cfg.source}: paths.watch: folder does not exist: "
                              f"{', '.join(missing)}")
        return Watcher(cfg.paths.watch, cfg.watch.patterns, cfg.watch.ignore_patterns,
                       observer=cfg.watch.observer, poll_interval_s=cfg.watch.poll_interval_s)

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
            return
        self._stop += 1
        if self._stop >= 2:
            raise _Abort()

    def _install_signals(self) -> dict[int, Any]:
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old[sig] = signal.signal(sig, self._signal)
        return old

    def _start(self) -> None:
        from driftwatch.service.dispatcher import Dispatcher
        from driftwatch.service.executor import make_executor
        from driftwatch.store.db import Store

        self.cfg.paths.products.mkdir(parents=True, exist_ok=True)
        self.cfg.paths.state.mkdir(parents=True, exist_ok=True)
        ccd_fn = load_callable(self.options.ccd_task)  # fail now, not at the first CCD
        self.store = Store.from_config(self.cfg)
        self.executor = make_executor(self.cfg.workers)
        # The catalogue builder is imported on first use by the dispatcher.
        self.dispatcher = Dispatcher(self.cfg, self.store, self.executor, ccd_fn=ccd_fn,
                                     alerts=self.cfg.alerts.enabled,
                                     on_exposure_done=self._on_exposure_done,
                                     on_done=self._wake)
        self.dispatcher.requeue_running()
        self.watcher = self._make_watcher(self.cfg)
        self.watcher.start()
        self.alerts = _start_alerts(self.cfg, self.store)

    # -------------------------------------------------------------------------------------
    # The loop
    # -------------------------------------------------------------------------------------
    def run(self) -> int:
        old = self._install_signals()
        started = time.monotonic()
        try:
            self.notifier.status("starting")
            self._start()
            self._reconcile()
            self._ops(lambda s: outbox().queue_daemon_started(s, self.cfg, version=__version__))
            self.notifier.ready(self._status_text())
            log.info("ready (pid %d)", os.getpid())
            while not self._stop:
                if self._reload:
                    self._do_reload()
                self._guarded_turn()
                if self.options.once and self._idle():
                    log.info("once: nothing left to do")
                    break
                if self.options.once and time.monotonic() - started > self.options.once_timeout_s:
                    log.error("once: work still pending after %.0f s",
                              self.options.once_timeout_s)
                    self._shutdown(grace=True)
                    return 1
            self._shutdown(grace=True)
            return 0
        except _Abort:
            log.warning("second stop signal: exiting at once")
            self._shutdown(grace=False)
            return 0
        except BaseException:
            log.debug("leaving on an error", exc_info=True)
            self._shutdown(grace=False)
            raise
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.notifier.close()

    def _guarded_turn(self) -> None:
        """One turn; an error is logged and retried, and only a persistent one ends the daemon."""
        try:
            self._turn()
        except (DriftwatchError, SQLAlchemyError, OSError) as exc:
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            log.exception("error in the main loop (%s); trying again", type(exc).__name__)
            self._healthy = False  # no watchdog ping from this turn
            if self.dispatcher is not None:
                # A result that could not be recorded left its job 'running': put it back
                # (the try counts, so a job whose result can never be recorded ends 'failed').
                try:
                    self.dispatcher.requeue_running()
                except (DriftwatchError, SQLAlchemyError):
                    log.exception("cannot requeue the unrecorded jobs")
            if now - self._failing_since > MAX_FAILING_S:
                raise DriftwatchError(f"the main loop has failed for {MAX_FAILING_S:.0f} s; "
                                      "exiting so that systemd restarts the service") from exc
            time.sleep(1.0)
            return
        self._failing_since = None

    def _wake(self) -> None:
        """A task finished (called from the executor's thread): end the loop's wait now."""
        watcher = self.watcher
        if watcher is not None:
            watcher.wake()

    def _turn(self) -> None:
        assert self.watcher is not None and self.dispatcher is not None
        busy = len(self.gate) or self.dispatcher.in_flight
        due = self.gate.next_due()
        tick = BUSY_TICK_S if busy else IDLE_TICK_S
        if due is not None:
            tick = min(max(due, BUSY_TICK_S), IDLE_TICK_S)
        self.watcher.wait(tick)
        for arrival in self.watcher.drain():
            self.gate.offer(arrival.path, renamed=arrival.renamed)
        if time.monotonic() >= self._next_scan:
            self._reconcile()
        self._handle(self.gate.poll())
        # Freed workers get their next jobs before the results are written (refill), then
        # what finished is recorded, then any worker still free is given a job.
        if self.dispatcher.collect(timeout=0, refill=True) and self.alerts is not None:
            self.alerts.wake()  # candidates of a finished exposure may be queued
        self.dispatcher.submit_ready()
        self._health()

    def _idle(self) -> bool:
        assert self.store is not None and self.dispatcher is not None
        if len(self.gate) or self.dispatcher.in_flight:
            return False
        with self.store.session_scope() as s:
            n = s.scalar(select(func.count()).select_from(CcdJob)
                         .where(CcdJob.state.in_((QUEUED, RUNNING))))
        return not n

    # -------------------------------------------------------------------------------------
    # Files
    # -------------------------------------------------------------------------------------
    def _reconcile(self) -> None:
        """Offer every file on disk that the database does not know (or knows at another size)."""
        assert self.watcher is not None and self.store is not None
        self._next_scan = time.monotonic() + self.cfg.watch.rescan_interval_s
        with self.store.session_scope() as s:
            known = dict(s.execute(select(Exposure.path, Exposure.size_bytes)).all())
        n = 0
        for path in self.watcher.scan():
            key = str(path.resolve())
            size = known.get(key, -1)
            if size != -1 and (size is None or _size(path) == size):
                continue
            if not self.gate.decided(path):
                self.gate.offer(path)
                n += 1
        if n:
            log.info("reconciliation scan: %d file(s) to look at", n)
        self.gate.prune()

    def _handle(self, res: GateResult) -> None:
        for judged in res.accepted:
            self._accept(judged)
        for judged in res.corrupt:
            self._reject(judged.path, judged.verdict.reason, judged.size)
        for judged in res.timed_out:
            log.warning("%s: not complete after %.0f s (%s); left for the next scan",
                        judged.path, judged.waited_s, judged.verdict.reason)
            self.notifier.status(f"file never completed: {Path(judged.path).name}")
            self._ops(lambda s, j=judged: outbox().queue_file_incomplete(
                s, self.cfg, j.path, j.waited_s, j.size))

    def _accept(self, judged: Judged) -> None:
        from driftwatch.io.decam import read_exposure_info
        from driftwatch.service.planner import plan_file

        assert self.store is not None
        try:
            info = read_exposure_info(judged.path)
        except InputError as exc:
            self._reject(judged.path, str(exc), judged.size)
            return
        try:
            with self.store.session_scope() as s:
                result = plan_file(s, judged.path, info, self.cfg)
        except InputError as exc:
            self._reject(judged.path, str(exc), judged.size)
            return
        except BaseException:
            self.gate.forget(judged.path)  # not planned: the next scan offers it again
            raise
        log.info("[%s %s] %s accepted after %.1f s: %s, %d job(s) new, %d reset",
                 result.exposure.night, info.expnum, Path(judged.path).name, judged.waited_s,
                 result.role, result.created, result.reset)

    def _reject(self, path: str, reason: str, size: int) -> None:
        """Record a file that cannot be reduced as failed (so the scan leaves it), and report it."""
        assert self.store is not None
        log.error("rejected: %s", reason)
        key = str(Path(path).resolve())
        with self.store.session_scope() as s:
            exp = s.scalars(select(Exposure).where(Exposure.path == key)).one_or_none()
            if exp is None:
                exp = Exposure(path=key, role=ROLE_IGNORED, state=EXP_FAILED)
                s.add(exp)
            elif exp.jobs:
                # A known exposure whose file went bad: keep its jobs, do not replan them.
                log.warning("%s changed into a bad file; its existing jobs are kept", key)
            exp.state, exp.error, exp.size_bytes = EXP_FAILED, reason, size
            s.flush()
            exp_id = exp.id
        self._ops(lambda s: outbox().queue_exposure_failed(s, self.cfg, exp_id, reason))

    # -------------------------------------------------------------------------------------
    # Health, status, reload, shutdown
    # -------------------------------------------------------------------------------------
    def _health(self) -> None:
        assert self.watcher is not None and self.dispatcher is not None
        if not self.notifier.watchdog_due() and time.monotonic() < self._next_status:
            return
        healthy = True
        try:
            with self.store.engine.connect() as conn:  # type: ignore[union-attr]
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach the database means unhealthy
            log.error("database unreachable: %s", exc)
            healthy = False
        if self.executor is None or self.executor.needs_restart():
            log.error("the worker pool is not alive")
            healthy = False
        if not self.watcher.alive():
            log.error("the file watcher thread died: restarting it")
            self.watcher.stop()
            self.watcher = self._make_watcher(self.cfg)
            self.watcher.start()
            self._next_scan = 0.0  # events were lost meanwhile
        if healthy != self._healthy:
            log.warning("health: %s", "restored" if healthy else "lost")
            self._healthy = healthy
        if healthy and self.notifier.watchdog_due():
            self.notifier.watchdog()
        if time.monotonic() >= self._next_status:
            self._next_status = time.monotonic() + STATUS_EVERY_S
            self.notifier.status(self._status_text())
            self._ops(lambda s: outbox().queue_nightly_summary_if_due(s, self.cfg))

    def _status_text(self) -> str:
        if self.store is None:
            return "starting"
        with self.store.session_scope() as s:
            counts = dict(s.execute(select(CcdJob.state, func.count())
                                    .group_by(CcdJob.state)).all())
        jobs = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no jobs"
        return f"{len(self.gate)} file(s) settling; jobs: {jobs}"

    def _do_reload(self) -> None:
        self._reload = False
        source = self.cfg.source
        if source is None:
            log.warning("SIGHUP: no configuration file to reload")
            return
        self.notifier.reloading()
        try:
            new = load_config(source)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running configuration: %s", exc)
            self.notifier.ready(self._status_text())
            return
        old = self.cfg
        if new.paths != old.paths:
            log.warning("SIGHUP: changes to paths.* need a restart; the rest is applied")
            new = dataclasses.replace(new, paths=old.paths)
        if new.workers != old.workers:
            log.warning("SIGHUP: changes to workers.* need a restart; the rest is applied")
            new = dataclasses.replace(new, workers=old.workers)
        self.cfg = new
        if new.watch != old.watch or new.pipeline != old.pipeline:
            self.gate = self._make_gate(new)
            if self.watcher is not None:
                self.watcher.stop()
            self.watcher = self._make_watcher(new)
            self.watcher.start()
            self._next_scan = 0.0
        if self.dispatcher is not None:
            self.dispatcher.cfg = new
        if self.alerts is not None:
            self.alerts.reconfigure(new)
        log.info("SIGHUP: configuration reloaded from %s", source)
        self.notifier.ready(self._status_text())

    def _shutdown(self, grace: bool) -> None:
        self.notifier.stopping("stopping")
        if self.watcher is not None:
            self.watcher.stop()
        if self.dispatcher is not None:
            grace_s = self.cfg.workers.grace_period_s if grace else 0.0
            running, t0 = self.dispatcher.in_flight, time.monotonic()
            pids = _worker_pids(self.executor)
            try:
                self.dispatcher.shutdown(grace_s)
            except _Abort:
                log.warning("second stop signal: not waiting for running jobs")
                self.dispatcher.shutdown(0.0)
                grace_s = 0.0
            log.info("stopping: %d job(s) were running (grace %.0f s)", running, grace_s)
            if running and time.monotonic() - t0 >= grace_s:
                # Workers still busy past the grace period were handed back: stop them now
                # rather than let the interpreter wait for them at exit (products are written
                # atomically, so a killed CCD leaves nothing half-written).
                _kill(pids)
        self._ops(lambda s: outbox().queue_daemon_stopped(
            s, self.cfg, reason="stopped" if grace else "stopped at once (second signal)"))
        if self.alerts is not None:
            try:
                if grace:
                    # Give the sender a moment to deliver what is queued (the 'stopped'
                    # message); anything left is sent by the next start, from the outbox.
                    self._wait_outbox_empty(ALERTS_FLUSH_S)
                self.alerts.stop(timeout=5.0)
            except Exception:
                log.exception("stopping the alert sender")
            self.alerts = None
        if self.store is not None:
            self.store.dispose()

    def _wait_outbox_empty(self, timeout_s: float) -> None:
        assert self.store is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.store.session_scope() as s:
                if not outbox().state_counts(s).get(outbox().PENDING, 0):
                    return
            time.sleep(0.05)

    def _ops(self, queue: Callable[[Any], Any]) -> None:
        """Queue one operations message through the alerts outbox (de-duplicated there)."""
        if self.store is None or not self.cfg.alerts.enabled:
            return
        try:
            with self.store.session_scope() as s:
                queue(s)
        except Exception:  # a message must never take the daemon down
            log.exception("cannot queue an operations message")
            return
        if self.alerts is not None:
            self.alerts.wake()

    def _on_exposure_done(self, session: Any, exposure: Exposure) -> None:
        """Dispatcher hook, inside its transaction: the exposure's candidates and failures."""
        ob = outbox()
        ob.queue_exposure_alert_from_db(session, self.cfg, exposure.id)
        if exposure.state == EXP_FAILED:
            ob.queue_exposure_failed(session, self.cfg, exposure.id)
        if exposure.night:
            ob.queue_failure_rate_if_over(session, self.cfg, exposure.night)


def outbox() -> Any:
    """The alerts outbox module (imported late: the daemon runs without it in unit tests)."""
    from driftwatch.alerts import outbox as module

    return module


def _worker_pids(executor: Any) -> list[int]:
    """Process ids of the local pool's workers (a Dask cluster stops its own)."""
    get = getattr(executor, "worker_pids", None)
    try:
        pids = get() if get is not None else []
    except Exception:  # the pool is already gone
        return []
    return [p for p in pids if isinstance(p, int)] if isinstance(pids, list) else []


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # already gone
            pass


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _start_alerts(cfg: Config, store: Any) -> Any:
    """Start the Slack sender thread (messages stay in the outbox if it cannot start)."""
    if not cfg.alerts.enabled:
        return None
    from driftwatch.alerts.sender import AlertSender

    sender = AlertSender(cfg, store)
    try:
        sender.start()
    except DriftwatchError as exc:  # another sender holds the lock (a manual 'alerts send')
        log.warning("alerts: the sender did not start (%s); messages wait in the outbox", exc)
        return None
    return sender


def main(cfg: Config, options: RunOptions = RunOptions()) -> int:
    """Run the daemon with a validated configuration; return the exit code."""
    return Daemon(cfg, options).run()
