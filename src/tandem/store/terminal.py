"""Download progress in a terminal: one line that updates in place (or a line per file when the
output is not a terminal), from the same board a node shows the cluster."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from tandem.cluster.topology import DownloadProgress
from tandem.model.stage import LayerRange
from tandem.sizes import format_bytes
from tandem.store.progress import DownloadBoard

REFRESH_SECONDS = 0.25


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(download: DownloadProgress) -> str:
    source = f"  from {download.source}" if download.source else ""
    return (
        f"{download.model}: {download.files_done}/{download.files_total} files  "
        f"{format_bytes(download.done_bytes)} / {format_bytes(download.total_bytes or 0)}  "
        f"{format_bytes(download.bytes_per_second or 0.0)}/s  ETA {format_duration(download.eta)}{source}"
    )


class TerminalProgress:
    """Prints a board's running downloads until stopped; use as a context manager."""

    def __init__(self, board: DownloadBoard, stream: TextIO = sys.stderr) -> None:
        self.board = board
        self.stream = stream
        self.interactive = stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last_printed: tuple[int, int] | None = None
        self._width = 0

    def __enter__(self) -> TerminalProgress:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._print(final=True)
        if self.interactive and self._width:
            self.stream.write("\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self._print(final=False)

    def _print(self, final: bool) -> None:
        downloads = self.board.snapshot()
        if not downloads:
            return
        current = downloads[-1]
        line = progress_line(current)
        if self.interactive:
            padding = " " * max(0, self._width - len(line))
            self.stream.write(f"\r{line}{padding}")
            self._width = len(line)
        else:
            key = (len(downloads), current.files_done)
            if key == self._last_printed and not final:
                return
            self._last_printed = key
            self.stream.write(line + "\n")
        self.stream.flush()


def summary(download: DownloadProgress | None, elapsed: float) -> str:
    """The last line of a download: what was fetched, and how fast."""
    if download is None:
        return "every file was already here"
    rate = download.done_bytes / elapsed if elapsed > 0 else 0.0
    return (
        f"fetched {download.files_done} files ({format_bytes(download.done_bytes)}) in "
        f"{format_duration(elapsed)} ({format_bytes(rate)}/s)"
    )


def fetch_with_progress(
    model: str, layers: LayerRange | None = None, metadata_only: bool = False, say_if_present: bool = False
) -> Path:
    """`ModelFetcher.ensure` for the command line: progress on stderr, then a summary line (when
    nothing had to be fetched, only if `say_if_present`). Directories and the demo return at once,
    without touching the network."""
    from tandem.store.fetch import ModelFetcher

    board = DownloadBoard()
    started = time.monotonic()
    with TerminalProgress(board):
        path = ModelFetcher(board=board).ensure(model, layers, metadata_only=metadata_only)
    downloads = board.snapshot()
    if downloads or say_if_present:
        print(summary(downloads[-1] if downloads else None, time.monotonic() - started), file=sys.stderr)
    return path
