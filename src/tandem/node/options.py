"""A node's settings, from the command line (and the environment, through `tandem.settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tandem.protocol.runner import DEFAULT_QUEUE_LIMIT

DEFAULT_PORT = 52525
HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats to each peer
PEER_TIMEOUT = 5.0  # a peer not heard from for this long has left
LINK_MEASURE_INTERVAL = 30.0  # seconds between link measurements to each peer


@dataclass(frozen=True)
class NodeOptions:
    data_dir: Path
    host: str = "0.0.0.0"  # address the HTTP server binds
    port: int = DEFAULT_PORT
    advertise_host: str | None = None  # what peers use to reach this node; None: detected
    name: str | None = None
    secret: str | None = None  # --secret; else TANDEM_SECRET or the secret file
    static_peers: tuple[str, ...] = ()
    discovery_interfaces: tuple[str, ...] | None = None  # None: every interface; (): mDNS off
    devices: tuple[str, ...] | None = None  # torch device names this node may use; None: all
    runner_threads: int | None = None  # CPU threads per runner process
    engine: str | None = None  # --engine: "torch", "mlx"; None: MLX on Apple silicon, else torch
    memory_limit: int | None = None  # bytes each device offers at most (--memory); None: all it has
    remeasure: bool = False
    models_dirs: tuple[Path, ...] = ()  # folders of checkpoint directories to offer (--models-dir)
    api_key: str | None = None  # --api-key, else TANDEM_API_KEY; None: no key
    open_api: bool = False  # --open-api / TANDEM_OPEN_API=1: other machines may use the API and dashboard
    # Requests an instance whose rank 0 runs here holds beyond its slots (one more: 429).
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    extra: dict = field(default_factory=dict)
