"""The signed requests and replies between nodes (`/internal/*` routes; `node/control.py`
signs and sends them, `node/control_routes.py` verifies and answers them).

    POST /internal/heartbeat                  Heartbeat -> HeartbeatReply
    GET  /internal/state                      -> ClusterState
    GET  /internal/blob?bytes=N               -> Blob (link bandwidth probe)
    POST /internal/runner-report              RunnerReported -> Done
    POST /internal/runners                    StartRunner -> RunnerStarted
    POST /internal/runners/stop               StopRunners -> Done
    POST /internal/instances                  LaunchRequest -> Instance
    DELETE /internal/instances/{id}           -> Done
    POST /internal/instances/{id}/generate    GenerateRequest -> JSON lines of RequestEvent
    GET  /internal/instances/{id}/load        -> InstanceLoad
    POST /internal/files/prepare              PrepareStage -> PreparedStage
    GET  /internal/files/manifest?repo&revision  -> RepoManifest
An error reply is `Refusal` with a status of 400 or more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tandem.cluster.state import ClusterState, RunnerReported
from tandem.cluster.topology import LinkInfo, NodeInfo
from tandem.model.stage import LayerRange
from tandem.protocol.runner import RunnerSpec


@dataclass(frozen=True)
class Heartbeat:
    """A node's view, sent to every peer once a second."""

    node: NodeInfo
    started_at: float
    state_version: int
    known: tuple[str, ...]  # addresses of the peers it knows, so members learn of each other
    links: tuple[LinkInfo, ...]
    runners: tuple[RunnerReported, ...]  # its runners' statuses (a new coordinator learns them)


@dataclass(frozen=True)
class HeartbeatReply:
    """The replier's own view; the coordinator adds its state when the asker's is out of date."""

    view: Heartbeat
    state: ClusterState | None = None


@dataclass(frozen=True)
class Blob:
    pad: str


@dataclass(frozen=True)
class Done:
    """The request was carried out; nothing to say."""


@dataclass(frozen=True)
class Refusal:
    error: str


@dataclass(frozen=True)
class StartRunner:
    spec: RunnerSpec


@dataclass(frozen=True)
class RunnerStarted:
    port: int | None = None  # rank 0 of several: its rendezvous port


@dataclass(frozen=True)
class StopRunners:
    instance_id: str


@dataclass(frozen=True)
class LaunchRequest:
    """Start a model instance across the cluster (see the public `POST /v1/instances`)."""

    model: str
    context: int | None = None
    sequences: int | None = None
    devices: tuple[str, ...] | None = None
    min_stages: int | None = None
    quantize: Literal["int8", "int4"] | None = None  # quantize a 16/32-bit checkpoint as it loads
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: auto (device.resolve_dtype)
    wait: bool = False
    reuse: bool = False

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError(
                "model: name a model (a catalog id, a Hugging Face repo id, a directory or 'demo')"
            )


@dataclass(frozen=True)
class InstanceLoad:
    """An instance's requests now, as its rank 0 counts them (`GET /v1/instances/{id}/load`)."""

    requests: int  # held by the runner: running or waiting
    waiting: int  # waiting for a place in the engine
    slots: int  # the instance's KV-cache slots (`sequences`)
    queue_limit: int  # requests held beyond the slots; the next one is refused (429)


@dataclass(frozen=True)
class PrepareStage:
    """Fetch the files one stage of `model` needs (the coordinator asks before runners start)."""

    model: str
    layers: LayerRange
    num_layers: int


@dataclass(frozen=True)
class PreparedStage:
    model_dir: str
