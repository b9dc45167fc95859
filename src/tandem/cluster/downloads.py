"""Model downloads a node reports in its heartbeats, for the dashboard. Pure values.

Bytes are bytes, speeds bytes per second, times seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DownloadState = Literal["downloading", "done", "failed"]


@dataclass(frozen=True)
class ModelDownload:
    """One model's files being fetched by a node (all of them, or one layer range's).

    `bytes_total` counts only what had to be fetched (files already on disk are left out), so a
    download that finds everything in place never appears here.
    """

    model: str  # as named: a catalog id or a Hugging Face repo id, "@commit" when pinned
    repo_id: str
    commit: str
    layers: str | None  # "START:END" (half-open) when only one stage's files are fetched
    state: DownloadState
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    speed: float  # over the last few seconds
    eta: float | None  # seconds to go at that speed; None when unknown
    source: str  # where the current file comes from: "hub" or "peer NODE_ID"
    started_at: float  # Unix time
    message: str | None = None  # why it failed
