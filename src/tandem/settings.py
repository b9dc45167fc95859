"""Every environment variable Tandem reads, read here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

SECRET_FILE = "secret"
RENDEZVOUS_TOKEN_VARIABLE = "TANDEM_RENDEZVOUS_TOKEN"  # a node hands its runners their instance's token


@dataclass(frozen=True)
class EngineOptions:
    """The engine's performance switches, as one value: what a runner spec carries and a
    benchmark compares. Defaults are the fast path; each switch exists to measure against it."""

    eager: bool = False  # no Triton kernels and no CUDA graphs on GPUs
    overlap_launches: bool = True  # each decode kernel starts while the one before it ends (sm90+)
    run_ahead: bool | None = None  # queue greedy decode steps ahead: None where decode graphs are
    triton_gemv: bool = True  # decode products through Triton's matrix-vector kernel, not cuBLAS
    symmetric_all_reduce: bool = True  # GPU groups of one host sum through symmetric memory, not NCCL
    micro_batches: int | None = None  # steps a pipeline keeps in flight: None one per stage, 1 one at a time
    prefill_graphs: bool = True  # prompts of up to 512 tokens replay CUDA graphs (whole-model dense stages)

    @classmethod
    def from_environment(cls) -> EngineOptions:
        """TANDEM_EAGER=1, TANDEM_PDL=0, TANDEM_RUN_AHEAD=0|1, TANDEM_GEMV=0, TANDEM_SYMMETRIC=0,
        TANDEM_MICRO_BATCHES=N and TANDEM_PREFILL_GRAPHS=0 change the defaults."""
        return cls(
            eager=os.environ.get("TANDEM_EAGER", "") not in ("", "0"),
            overlap_launches=os.environ.get("TANDEM_PDL", "") != "0",
            run_ahead={"1": True, "0": False}.get(os.environ.get("TANDEM_RUN_AHEAD", "")),
            triton_gemv=os.environ.get("TANDEM_GEMV", "") != "0",
            symmetric_all_reduce=os.environ.get("TANDEM_SYMMETRIC", "") != "0",
            micro_batches=_micro_batches(os.environ.get("TANDEM_MICRO_BATCHES", "")),
            prefill_graphs=os.environ.get("TANDEM_PREFILL_GRAPHS", "") != "0",
        )

    def but(self, **changes: bool | int | None) -> EngineOptions:
        return replace(self, **changes)


def _micro_batches(value: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TANDEM_MICRO_BATCHES must be a whole number of 1 or more, got {value!r}")
    return int(value)


_engine_options: EngineOptions | None = None


def engine_options() -> EngineOptions:
    """The options this process's engine runs with: those installed with `use_engine_options`
    (a runner installs its spec's), else the environment's."""
    return _engine_options or EngineOptions.from_environment()


def use_engine_options(options: EngineOptions) -> None:
    """Install the options for this process's engine. Called where an engine is assembled
    (`tandem.runner.assemble`), before any model code runs; never flipped mid-run."""
    global _engine_options
    _engine_options = options


def rendezvous_token() -> str | None:
    """The token of this runner's instance rendezvous (TANDEM_RENDEZVOUS_TOKEN), set by the node."""
    return os.environ.get(RENDEZVOUS_TOKEN_VARIABLE) or None


def debug() -> bool:
    """TANDEM_DEBUG=1 shows tracebacks for internal errors instead of one-line messages."""
    return os.environ.get("TANDEM_DEBUG", "") not in ("", "0")


def triton_interpreter() -> bool:
    """TRITON_INTERPRET=1 (Triton's own switch): kernels run in Triton's interpreter on the CPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def runner_silence_seconds() -> float:
    """TANDEM_RUNNER_SILENCE_SECONDS (default 30): how long a runner may send nothing, not even
    its pulse, before its node kills it and its instance is re-placed."""
    try:
        return max(float(os.environ.get("TANDEM_RUNNER_SILENCE_SECONDS", "") or 30.0), 3.0)
    except ValueError:
        return 30.0


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


def open_api() -> bool:
    """TANDEM_OPEN_API=1: as --open-api, other machines may use the API and dashboard."""
    return os.environ.get("TANDEM_OPEN_API", "") not in ("", "0")


def secret_path() -> Path:
    """Where the cluster secret is kept: `secret` in the data dir. Copy it to every machine."""
    return data_dir() / SECRET_FILE
