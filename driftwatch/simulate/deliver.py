"""Replay a simulated night into a folder the way the data-transfer system delivers files.

Exposures arrive in order, one every ``cadence_s`` seconds. Each file is written in chunks over
``write_seconds`` (a growing file). Some files are written under a temporary name and renamed
when complete: rsync's ``.NAME.XXXXXX`` or a ``NAME.part``; the others are written in place.
The image and its DQ mask come in either order, the second up to a few seconds after the first.
Everything is decided by the seed; :func:`deliver` returns the log of what it did.
"""

from __future__ import annotations

import logging
import os
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["DeliveryStep", "FileDelivery", "deliver", "plan_delivery"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileDelivery:
    """How one file will arrive: when (s after the replay start), under which temporary name."""

    source: Path
    name: str
    temp_name: str | None     # None: written in place
    start_s: float
    duration_s: float
    n_chunks: int


@dataclass(frozen=True)
class DeliveryStep:
    """One thing :func:`deliver` did: 'chunk' (bytes appended to ``name``) or 'rename'."""

    t_s: float
    action: str
    name: str
    nbytes: int
    final_name: str


def plan_delivery(exposures: Sequence[tuple[Path, Path]], cadence_s: float, seed: int = 0,
                  write_seconds: float = 2.0) -> list[FileDelivery]:
    """Plan the arrival of (image, mask) pairs, one pair per ``cadence_s`` seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for k, pair in enumerate(exposures):
        t0 = k * cadence_s
        order = list(pair) if rng.uniform() < 0.5 else list(pair)[::-1]
        lag = float(rng.uniform(0.0, min(3.0, 0.3 * cadence_s)))
        for i, src in enumerate(order):
            mode = rng.choice(["direct", "rsync", "part"])
            name = src.name
            if mode == "rsync":
                suffix = "".join(rng.choice(list(string.ascii_letters + string.digits), 6))
                temp = f".{name}.{suffix}"
            elif mode == "part":
                temp = f"{name}.part"
            else:
                temp = None
            out.append(FileDelivery(source=src, name=name, temp_name=temp,
                                    start_s=t0 + (lag if i else 0.0),
                                    duration_s=float(write_seconds * rng.uniform(0.6, 1.0)),
                                    n_chunks=int(rng.integers(3, 9))))
    return out


def deliver(exposures: Sequence[tuple[Path, Path]], dest: str | Path, cadence_s: float,
            seed: int = 0, write_seconds: float = 2.0,
            sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> list[DeliveryStep]:
    """Write the files into ``dest`` in real time following :func:`plan_delivery`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    plans = plan_delivery(exposures, cadence_s, seed, write_seconds)
    # every chunk and rename as a timed action; executed in time order
    actions: list[tuple[float, int, int, FileDelivery]] = []
    for p in plans:
        for c in range(p.n_chunks):
            actions.append((p.start_s + p.duration_s * c / max(p.n_chunks - 1, 1), c, 0, p))
        if p.temp_name:
            actions.append((p.start_s + p.duration_s + 1e-3, p.n_chunks, 1, p))
    actions.sort(key=lambda a: (a[0], a[2], a[3].name))
    sizes = {p.name: p.source.stat().st_size for p in plans}
    handles: dict[str, IO[bytes]] = {}
    steps: list[DeliveryStep] = []
    start = clock()
    try:
        for t, c, is_rename, p in actions:
            wait = t - (clock() - start)
            if wait > 0:
                sleep(wait)
            now = clock() - start
            written_name = p.temp_name or p.name
            if is_rename:
                os.replace(dest / p.temp_name, dest / p.name)
                steps.append(DeliveryStep(now, "rename", p.temp_name, 0, p.name))
                log.info("delivered %s (renamed from %s)", p.name, p.temp_name)
                continue
            size = sizes[p.name]
            lo = size * c // p.n_chunks
            hi = size * (c + 1) // p.n_chunks
            if c == 0:
                handles[p.name] = open(dest / written_name, "wb")
            fh = handles[p.name]
            with open(p.source, "rb") as src:
                src.seek(lo)
                fh.write(src.read(hi - lo))
            fh.flush()
            if c == p.n_chunks - 1:
                fh.close()
                del handles[p.name]
                if not p.temp_name:
                    log.info("delivered %s", p.name)
            steps.append(DeliveryStep(now, "chunk", written_name, hi - lo, p.name))
    finally:
        for fh in handles.values():
            fh.close()
    return steps
