"""Everything a runner process needs to start, as one JSON-serializable value."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

from tandem.engine.stage import LayerRange, StageSpec


@dataclass(frozen=True)
class RunnerSpec:
    instance_id: str
    rank: int
    world_size: int
    model_dir: str
    layer_start: int
    layer_end: int
    num_layers: int
    device: str  # "cpu", "cuda:0"
    dtype: str | None  # None: the device's default
    max_context: int
    num_slots: int
    max_prefill_tokens: int
    backend: Literal["gloo", "nccl"] = "gloo"
    master_host: str = "127.0.0.1"
    master_port: int = 0  # rank 0 picks a free port when 0 and reports it
    threads: int | None = None  # torch CPU threads; None: torch's default

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @property
    def stage(self) -> StageSpec:
        return StageSpec(LayerRange(self.layer_start, self.layer_end), self.num_layers)

    @property
    def is_driver(self) -> bool:
        """Rank 0 takes requests, schedules, and runs the first stage."""
        return self.rank == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunnerSpec:
        return cls(**json.loads(text))
