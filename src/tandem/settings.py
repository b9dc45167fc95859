"""Every environment variable Tandem reads, read here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_FILE = "secret"


def debug() -> bool:
    """TANDEM_DEBUG=1 shows tracebacks for internal errors instead of one-line messages."""
    return os.environ.get("TANDEM_DEBUG", "") not in ("", "0")


def eager_only() -> bool:
    """TANDEM_EAGER=1 runs CUDA without Triton kernels or CUDA graphs (for comparisons)."""
    return os.environ.get("TANDEM_EAGER", "") not in ("", "0")


def overlap_launches() -> bool:
    """TANDEM_PDL=0 launches the decode kernels one after another, never overlapped (for
    comparisons); by default each starts while the one before it finishes, where the GPU can."""
    return os.environ.get("TANDEM_PDL", "") != "0"


def run_ahead() -> bool | None:
    """TANDEM_RUN_AHEAD: 1 runs greedy decode steps ahead everywhere, 0 nowhere; unset or
    anything else, where decode graphs are."""
    return {"1": True, "0": False}.get(os.environ.get("TANDEM_RUN_AHEAD", ""))


def stacks_after() -> float | None:
    """TANDEM_STACKS_AFTER: seconds after which a `tandem bench` plan worker prints every
    thread's stack to its log, and again each time as long again (to see where a stuck rank
    waits); unset: never."""
    value = os.environ.get("TANDEM_STACKS_AFTER", "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def data_dir() -> Path:
    """Where a node keeps its identity, secret and caches: TANDEM_HOME, else the XDG data dir."""
    explicit = os.environ.get("TANDEM_HOME")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tandem"


def secret() -> str | None:
    """TANDEM_SECRET: the cluster secret as text; unset or empty means "use the secret file"."""
    return os.environ.get("TANDEM_SECRET") or None


def api_key() -> str | None:
    """TANDEM_API_KEY: when set (and no --api-key is given), every API route requires this key."""
    return os.environ.get("TANDEM_API_KEY") or None


def secret_path() -> Path:
    """Where the cluster secret is kept: `secret` in the data dir. Copy it to every machine."""
    return data_dir() / SECRET_FILE
