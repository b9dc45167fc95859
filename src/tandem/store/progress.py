"""Download progress: counters the fetching thread updates and anyone may read.

A node shows its board in its heartbeats (`NodeInfo.downloads`, one `DownloadProgress` per
fetch), so the cluster state and the dashboard see every node's downloads; `tandem download`
prints the same numbers in the terminal.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace

from tandem.cluster.topology import DownloadProgress

SPEED_WINDOW_SECONDS = 5.0
KEEP_FINISHED = 8  # finished or failed downloads a board still shows


class DownloadTracker:
    """One download. Thread-safe: the fetching thread writes, the node's loop reads."""

    def __init__(self, record: DownloadProgress) -> None:
        self._lock = threading.Lock()
        self._record = record
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), record.done_bytes)])

    # --- written by the fetching thread ---------------------------------------------------------

    def extend(self, files: int, count: int) -> None:
        """More files to fetch (the weights, once the config and index have told which)."""
        with self._lock:
            self._record = replace(
                self._record,
                files_total=self._record.files_total + files,
                total_bytes=(self._record.total_bytes or 0) + count,
            )

    def advance(self, count: int) -> None:
        with self._lock:
            done = self._record.done_bytes + count
            self._record = replace(self._record, done_bytes=done)
            now = time.monotonic()
            if now - self._samples[-1][0] >= 0.2:
                self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_SECONDS:
                self._samples.popleft()

    def fetching(self, file_name: str, source: str) -> None:
        with self._lock:
            self._record = replace(self._record, source=source, message=f"{file_name} from {source}")

    def file_done(self) -> None:
        with self._lock:
            self._record = replace(self._record, files_done=self._record.files_done + 1)

    def finish(self) -> None:
        with self._lock:
            self._record = replace(self._record, status="done", bytes_per_second=0.0, eta=0.0, message=None)

    def fail(self, message: str) -> None:
        with self._lock:
            self._record = replace(
                self._record, status="failed", bytes_per_second=0.0, eta=None, message=message
            )

    # --- read by anyone --------------------------------------------------------------------------

    def snapshot(self) -> DownloadProgress:
        with self._lock:
            record = self._record
            if record.status != "downloading":
                return record
            (first_time, first_bytes), now = self._samples[0], time.monotonic()
            elapsed = now - first_time
            speed = max((record.done_bytes - first_bytes) / elapsed, 0.0) if elapsed > 0.5 else 0.0
            remaining = max((record.total_bytes or 0) - record.done_bytes, 0)
            return replace(record, bytes_per_second=speed, eta=remaining / speed if speed > 0 else None)


class DownloadBoard:
    """The downloads of one process: those running, and the last few that ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trackers: list[DownloadTracker] = []

    def start(
        self,
        model: str,
        repo_id: str,
        commit: str,
        layers: str | None,
        files: tuple[int, int] = (0, 0),
        size: tuple[int, int] = (0, 0),
    ) -> DownloadTracker:
        """A new download of `files` (done, total) holding `size` bytes (done, total);
        `DownloadTracker.extend` adds files later."""
        tracker = DownloadTracker(
            DownloadProgress(
                model=model,
                done_bytes=size[0],
                total_bytes=size[1],
                bytes_per_second=0.0,
                repo_id=repo_id,
                commit=commit,
                layers=layers,
                files_done=files[0],
                files_total=files[1],
                started_at=time.time(),
            )
        )
        with self._lock:
            self._trackers.append(tracker)
            ended = [t for t in self._trackers if t.snapshot().status != "downloading"]
            for old in ended[: max(0, len(ended) - KEEP_FINISHED)]:
                self._trackers.remove(old)
        return tracker

    def snapshot(self) -> tuple[DownloadProgress, ...]:
        with self._lock:
            return tuple(t.snapshot() for t in self._trackers)
