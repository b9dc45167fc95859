"""Download progress: counters the fetching thread updates and anyone may read.

A node shows its board in its heartbeats (`NodeInfo.downloads`), so the cluster state and the
dashboard see every node's downloads; `tandem download` prints the same numbers in the terminal.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace

from tandem.cluster.downloads import ModelDownload

SPEED_WINDOW_SECONDS = 5.0
KEEP_FINISHED = 8  # finished or failed downloads a board still shows


class DownloadTracker:
    """One download. Thread-safe: the fetching thread writes, the node's loop reads."""

    def __init__(self, record: ModelDownload) -> None:
        self._lock = threading.Lock()
        self._record = record
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), record.bytes_done)])

    # --- written by the fetching thread ---------------------------------------------------------

    def advance(self, count: int) -> None:
        with self._lock:
            done = self._record.bytes_done + count
            self._record = replace(self._record, bytes_done=done)
            now = time.monotonic()
            if now - self._samples[-1][0] >= 0.2:
                self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_SECONDS:
                self._samples.popleft()

    def extend(self, files: int, count: int) -> None:
        """More files to fetch (the weights, once the config and index have told which)."""
        with self._lock:
            self._record = replace(
                self._record,
                files_total=self._record.files_total + files,
                bytes_total=self._record.bytes_total + count,
            )

    def source(self, label: str) -> None:
        with self._lock:
            self._record = replace(self._record, source=label)

    def file_done(self) -> None:
        with self._lock:
            self._record = replace(self._record, files_done=self._record.files_done + 1)

    def finish(self) -> None:
        with self._lock:
            self._record = replace(self._record, state="done", speed=0.0, eta=0.0)

    def fail(self, message: str) -> None:
        with self._lock:
            self._record = replace(self._record, state="failed", speed=0.0, eta=None, message=message)

    # --- read by anyone --------------------------------------------------------------------------

    def snapshot(self) -> ModelDownload:
        with self._lock:
            record = self._record
            if record.state != "downloading":
                return record
            (first_time, first_bytes), now = self._samples[0], time.monotonic()
            elapsed = now - first_time
            speed = (record.bytes_done - first_bytes) / elapsed if elapsed > 0.5 else 0.0
            remaining = max(record.bytes_total - record.bytes_done, 0)
            eta = remaining / speed if speed > 0 else None
            return replace(record, speed=max(speed, 0.0), eta=eta)


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
        files_total: int,
        bytes_total: int,
    ) -> DownloadTracker:
        tracker = DownloadTracker(
            ModelDownload(
                model=model,
                repo_id=repo_id,
                commit=commit,
                layers=layers,
                state="downloading",
                files_done=0,
                files_total=files_total,
                bytes_done=0,
                bytes_total=bytes_total,
                speed=0.0,
                eta=None,
                source="",
                started_at=time.time(),
            )
        )
        with self._lock:
            self._trackers.append(tracker)
            ended = [t for t in self._trackers if t.snapshot().state != "downloading"]
            for old in ended[: max(0, len(ended) - KEEP_FINISHED)]:
                self._trackers.remove(old)
        return tracker

    def snapshot(self) -> tuple[ModelDownload, ...]:
        with self._lock:
            return tuple(t.snapshot() for t in self._trackers)
