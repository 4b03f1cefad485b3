"""The completeness gate: a file is accepted only once it has settled and is structurally whole.

A path offered to the gate (from an event or the reconciliation scan) is watched until its size
and mtime have not changed for ``settle_s``; then the FITS completeness check runs
(:func:`driftwatch.io.completeness.check_fits`). A close-write event is no proof: writers may
open a file twice, and scp or ``rsync --inplace`` write in place.

A file offered as *renamed* into place (rsync, and most transfer tools, write a temporary name
and rename it once it is whole) is checked at once instead (``trust_rename``): the rename is
the writer saying it is done. It still has to pass the same check; if it fails it, or its size
or mtime change after the rename, it settles like any other file. This saves the settle time
(3 s by default) on every exposure.

Outcomes of :meth:`Gate.poll`:

- ``accepted``: complete; the daemon plans it.
- ``corrupt``: it cannot become valid by growing; reported once and not looked at again until it
  changes.
- ``timed_out``: still incomplete ``complete_timeout_s`` after it was first seen, and not
  changing; reported once and dropped. The next reconciliation scan offers it again: it is
  ignored while unchanged and watched afresh as soon as it changes.

The gate holds no threads and does no I/O beyond ``stat`` and the check; the clock and the check
are injectable for tests.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from driftwatch.io.completeness import Completeness, check_fits

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size, mtime_ns)


@dataclass
class _Pending:
    first_seen: float
    sig: Signature | None = None
    stable_since: float = 0.0
    checked: Signature | None = None     # signature at the last completeness check
    verdict: Completeness | None = None
    renamed: bool = False                # renamed into place and unchanged since: no settling


@dataclass(frozen=True)
class Judged:
    """A file the gate has decided about."""

    path: str
    verdict: Completeness
    waited_s: float          # from first offered to the decision
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class GateResult:
    accepted: tuple[Judged, ...] = ()
    corrupt: tuple[Judged, ...] = ()
    timed_out: tuple[Judged, ...] = ()


@dataclass
class Gate:
    """Track offered paths until they settle and pass the completeness check."""

    settle_s: float
    complete_timeout_s: float
    check: Callable[[str], Completeness] = field(default=check_fits)
    clock: Callable[[], float] = field(default=time.monotonic)
    trust_rename: bool = True

    def __post_init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        # Files already decided, by the signature they were decided at: offered again unchanged
        # (a late event, the next scan), they are dropped at once. Value: (signature, when,
        # status); see prune().
        self._decided: dict[str, tuple[Signature, float, str]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self) -> list[str]:
        return list(self._pending)

    def offer(self, path: str | os.PathLike[str], renamed: bool = False) -> None:
        """Start watching ``path``; if it is already watched, note how it arrived this time.

        ``renamed``: it has just been renamed into place, so (with ``trust_rename``) it is
        checked at the next :meth:`poll` without settling first. Offered again without it
        (a write after the rename, or the reconciliation scan), it settles like any file.
        """
        key = os.fspath(path)
        p = self._pending.get(key)
        if p is None:
            p = self._pending[key] = _Pending(first_seen=self.clock())
        if renamed and self.trust_rename:
            p.renamed, p.sig = True, None   # judged as it is now, whatever was seen before
        elif p.renamed:
            p.renamed, p.sig = False, None  # settling starts at the next poll

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Drop what the gate remembers of ``path`` (to decide it again, e.g. after a reload)."""
        key = os.fspath(path)
        self._pending.pop(key, None)
        self._decided.pop(key, None)

    def next_due(self) -> float | None:
        """Seconds until a pending file may be ready to check (None when nothing is pending)."""
        if not self._pending:
            return None
        now = self.clock()
        waits = [0.0 if p.renamed
                 else max(0.0, p.stable_since + self.settle_s - now) if p.sig and p.checked != p.sig
                 else self.settle_s for p in self._pending.values()]
        return min(waits)

    def poll(self) -> GateResult:
        """Stat every pending file; check the settled ones; return what was decided."""
        accepted, corrupt, timed_out = [], [], []
        now = self.clock()
        for path, p in list(self._pending.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:  # renamed away or deleted: its new name has its own event
                del self._pending[path]
                continue
            except OSError as exc:
                log.warning("cannot stat %s: %s", path, exc)
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._decided.get(path, (None,))[0] == sig:
                del self._pending[path]
                continue
            if sig != p.sig:
                if p.sig is not None:   # written to since it was offered: settle it
                    p.renamed = False
                p.sig, p.stable_since = sig, now
                if self.settle_s > 0 and not p.renamed:
                    continue
            if now - p.stable_since < self.settle_s and not p.renamed:
                continue
            if p.checked != sig:
                p.verdict = self.check(path)
                p.checked = sig
                # The check reads for a while: a file that moved meanwhile is judged next time.
                try:
                    st2 = os.stat(path)
                except OSError:
                    continue
                if (st2.st_size, st2.st_mtime_ns) != sig:
                    p.sig, p.stable_since, p.checked, p.renamed = None, now, None, False
                    continue
                if p.verdict.status == "incomplete":
                    p.renamed = False   # renamed before it was whole after all: settle it
                judged = Judged(path, p.verdict, now - p.first_seen, *sig)
                if p.verdict.status == "complete":
                    accepted.append(judged)
                elif p.verdict.status == "corrupt":
                    corrupt.append(judged)
                if p.verdict.status != "incomplete":
                    self._decided[path] = (sig, now, p.verdict.status)
                    del self._pending[path]
                    continue
            if now - p.first_seen >= self.complete_timeout_s:
                assert p.verdict is not None
                timed_out.append(Judged(path, p.verdict, now - p.first_seen, *sig))
                self._decided[path] = (sig, now, "incomplete")
                del self._pending[path]
        return GateResult(tuple(accepted), tuple(corrupt), tuple(timed_out))

    def decided(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` was decided at its current size and mtime."""
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except OSError:
            return False
        return self._decided.get(key, (None,))[0] == (st.st_size, st.st_mtime_ns)

    def prune(self, keep_s: float = 3600.0) -> int:
        """Forget decisions that no longer matter; return how many were dropped.

        Accepted and corrupt files are in the database, which keeps them from being offered
        again, so their entry only guards against late events and goes after ``keep_s``.
        Files reported as never complete stay remembered (else each scan would report them
        again) until they disappear.
        """
        now = self.clock()
        drop = [path for path, (_, when, status) in self._decided.items()
                if (status != "incomplete" and now - when > keep_s)
                or (status == "incomplete" and not os.path.exists(path))]
        for path in drop:
            del self._decided[path]
        return len(drop)


def expected_extnames(ccds: tuple[str, ...], skip: tuple[str, ...]) -> tuple[str, ...]:
    """The extensions a file without NEXTEND must hold: the configured CCDs that are not dead."""
    return tuple(c for c in ccds if c not in skip)


def make_check(expected: tuple[str, ...], verify_checksum: bool) -> Callable[[str], Completeness]:
    """Return the completeness check the daemon's gate uses, bound to the configuration."""

    def _check(path: str) -> Completeness:
        return check_fits(Path(path), expected_extnames=expected, verify_checksum=verify_checksum)

    return _check
