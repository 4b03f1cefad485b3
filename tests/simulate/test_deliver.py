"""--deliver-to: files arrive in chunks, some under temporary names renamed at the end."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from driftwatch.simulate.deliver import deliver, plan_delivery


@pytest.fixture
def sources(tmp_path: Path) -> list[tuple[Path, Path]]:
    src = tmp_path / "src"
    src.mkdir()
    pairs = []
    for k in range(4):
        img = src / f"c4d_260306_0130{k:02d}_ooi_VR_v1.fits"
        dq = src / f"c4d_260306_0130{k:02d}_ood_VR_v1.fits"
        img.write_bytes(os.urandom(2880 * (20 + k)))
        dq.write_bytes(os.urandom(2880 * (3 + k)))
        pairs.append((img, dq))
    return pairs


def test_plan_is_seeded_and_mixes_modes(sources) -> None:
    a = plan_delivery(sources * 4, cadence_s=45.0, seed=1)
    assert a == plan_delivery(sources * 4, cadence_s=45.0, seed=1)
    temps = [p.temp_name for p in a]
    assert any(t is None for t in temps)
    assert any(t and re.fullmatch(r"\.c4d_.*\.fits\.[A-Za-z0-9]{6}", t) for t in temps)
    assert any(t and t.endswith(".fits.part") for t in temps)
    starts = sorted({round(p.start_s // 45) for p in a})
    assert starts == list(range(16))  # one exposure per cadence
    first = [p for p in a if p.start_s < 45.0]
    assert {p.name for p in first} == {sources[0][0].name, sources[0][1].name}


def test_deliver_writes_chunks_then_renames(sources, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    seen: dict[str, set[int]] = {}
    stop = threading.Event()

    def watch() -> None:  # what a directory watcher would see
        while not stop.is_set():
            if dest.exists():
                for entry in os.scandir(dest):
                    try:
                        seen.setdefault(entry.name, set()).add(entry.stat().st_size)
                    except FileNotFoundError:
                        pass
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        t0 = time.monotonic()
        steps = deliver(sources, dest, cadence_s=0.3, seed=2, write_seconds=0.15)
        took = time.monotonic() - t0
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert 0.9 <= took < 5.0  # 4 exposures at a 0.3 s cadence, in real time
    for img, dq in sources:
        for src in (img, dq):
            assert (dest / src.name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted(s.name for pair in sources for s in pair)
    renames = [s for s in steps if s.action == "rename"]
    assert renames and all(s.name != s.final_name for s in renames)
    # a renamed file was visible under its temporary name before
    assert any(s.name in seen for s in renames)
    # files grew in several chunks
    grown = [name for name, sizes in seen.items() if len(sizes) >= 2]
    assert grown
    chunks = [s for s in steps if s.action == "chunk"]
    assert len(chunks) >= 3 * 2 * len(sources)
    for s in renames:  # every chunk of a renamed file came before its rename
        last_chunk = max(c.t_s for c in chunks if c.name == s.name)
        assert last_chunk <= s.t_s
