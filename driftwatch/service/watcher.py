"""Notice files arriving in the watched folders: watchdog events plus a reconciliation scan.

The event handler does one thing: put the path on a queue (an exception in a watchdog handler
kills the observer thread silently, so nothing that can fail runs there). Deciding whether a path
is an exposure (name patterns), whether it is complete (the gate) and whether it is new (the
database) happens in the daemon's loop, from :meth:`Watcher.drain` and :meth:`Watcher.scan`.

inotify is the default; ``watch.observer: polling`` uses watchdog's polling observer, which is
the one that works on NFS/CIFS mounts written from another host. Neither sees files that arrived
while the daemon was down, and inotify drops events silently when its queue overflows, so the
daemon also calls :meth:`Watcher.scan` at start-up and every ``watch.rescan_interval_s``.

Temporary names (rsync's ``.name.XXXXXX``, ``*.tmp``, ``*.part``) never match: their rename into
place arrives as a ``moved`` event whose destination is the final name, and that is the event.
An arrival says whether it came by such a rename: a writer renames a file once it has written
all of it, so the gate may check it without waiting for it to settle (``watch.trust_rename``).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

#: Event types that can mean "a file got new content or a new name here".
_EVENTS = frozenset({"created", "modified", "closed", "moved"})


@dataclass(frozen=True)
class Arrival:
    """A matching file an event was about."""

    path: str
    renamed: bool   # its last event was a rename into this name (a whole file, by convention)


class _Enqueue(FileSystemEventHandler):
    """Put (path, renamed) of an event on a queue, and nothing else."""

    def __init__(self, q: queue.SimpleQueue) -> None:
        super().__init__()
        self._q = q

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A folder's own "modified" (an entry added or removed) says nothing its files' events
        # do not; a folder created or renamed into place is walked (see Watcher.drain).
        if event.is_directory and event.event_type not in ("created", "moved"):
            return
        if event.event_type == "moved":
            self._q.put((event.dest_path, True))
        elif event.event_type in _EVENTS:
            self._q.put((event.src_path, False))


class Watcher:
    """Watch folders recursively; hand out the paths of candidate exposure files."""

    def __init__(self, folders: Sequence[Path], patterns: Sequence[str],
                 ignore_patterns: Sequence[str] = (), observer: str = "inotify",
                 poll_interval_s: float = 2.0) -> None:
        self.folders = tuple(Path(f) for f in folders)
        self.patterns = tuple(patterns)
        self.ignore_patterns = tuple(ignore_patterns)
        self.kind = observer
        self.poll_interval_s = poll_interval_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: list[tuple[str, bool] | None] = []   # taken off the queue by wait()
        self._observer: BaseObserver | None = None

    def matches(self, path: str | os.PathLike[str]) -> bool:
        """True for a file name that matches a pattern and no ignore pattern (names only)."""
        name = os.path.basename(os.fsdecode(path))
        if any(fnmatch.fnmatchcase(name, p) for p in self.ignore_patterns):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def start(self) -> None:
        """Start the observer thread on every folder (which must exist)."""
        if self.kind == "polling":
            obs: BaseObserver = PollingObserver(timeout=self.poll_interval_s)
        else:
            obs = Observer()
        handler = _Enqueue(self._queue)
        for folder in self.folders:
            obs.schedule(handler, str(folder), recursive=True)
        obs.daemon = True
        obs.start()
        self._observer = obs
        log.info("watching %s with the %s observer", ", ".join(map(str, self.folders)),
                 self.kind)

    def stop(self, timeout: float = 5.0) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None

    def alive(self) -> bool:
        """True while the observer thread runs (it dies on an error in a handler or emitter)."""
        return self._observer is not None and self._observer.is_alive()

    def wake(self) -> None:
        """Make a :meth:`wait` in progress (or the next one) return now. Any thread may call it."""
        self._queue.put(None)

    def wait(self, timeout: float) -> bool:
        """Block until an event is queued, :meth:`wake` is called, or ``timeout`` passes.

        True unless the timeout passed.
        """
        if self._held:
            return True
        try:
            item = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        self._held.append(item)   # kept in front: drain() must see events in their order
        return True

    def drain(self) -> list[Arrival]:
        """Return the distinct matching files queued since the last call (in arrival order).

        A file is ``renamed`` when its last event was a rename into its name: writes after a
        rename (a writer that renames first and then writes) make it an ordinary arrival.
        """
        seen: dict[str, bool] = {}
        while True:
            try:
                item = self._held.pop(0) if self._held else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:   # a wake-up, no event
                continue
            raw, renamed = item
            path = os.fsdecode(raw)
            if os.path.isdir(path):
                # A folder renamed into place brings files that raise no event of their own;
                # they were written before the rename like any renamed file.
                for found in _walk(Path(path)):
                    if self.matches(found):
                        seen.pop(str(found), None)
                        seen[str(found)] = renamed
            elif self.matches(path):
                seen.pop(path, None)
                seen[path] = renamed
        return [Arrival(path, renamed) for path, renamed in seen.items()]

    def scan(self) -> Iterator[Path]:
        """Yield every matching file now in the folders (the reconciliation scan)."""
        for folder in self.folders:
            for path in _walk(folder):
                if self.matches(path):
                    yield path


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder, onerror=lambda exc: log.warning("scan: %s", exc)):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name
