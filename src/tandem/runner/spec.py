"""Everything a runner process needs to start, as one JSON-serializable value."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

from tandem.model.stage import LayerRange, StageSpec

Backend = Literal["gloo", "nccl"]


@dataclass(frozen=True)
class InstanceLayout:
    """How an instance's ranks form pipeline stages: stage s is a tensor-parallel group of
    `stage_sizes[s]` consecutive ranks, the first of which (its leader) talks to the other stages.

    Rank 0 leads stage 0 and drives the instance; the leader of the last stage samples."""

    stage_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.stage_sizes or min(self.stage_sizes) < 1:
            raise ValueError(f"every stage needs at least one rank, got {self.stage_sizes}")

    @property
    def world_size(self) -> int:
        return sum(self.stage_sizes)

    @property
    def num_stages(self) -> int:
        return len(self.stage_sizes)

    def ranks(self, stage: int) -> range:
        """The global ranks of stage `stage`, its leader first."""
        first = sum(self.stage_sizes[:stage])
        return range(first, first + self.stage_sizes[stage])

    def leader(self, stage: int) -> int:
        return self.ranks(stage).start

    def stage_of(self, rank: int) -> int:
        for stage in range(self.num_stages):
            if rank in self.ranks(stage):
                return stage
        raise ValueError(f"rank {rank} is outside a world of {self.world_size}")


@dataclass(frozen=True)
class RunnerSpec:
    """One rank of an instance. `layer_start`/`layer_end` are its stage's layers; with
    `stage_sizes` several ranks share a stage as a tensor-parallel group (default: a rank each)."""

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
    backend: Backend = "gloo"  # of the whole instance: pipeline sends between stage leaders
    master_host: str = "127.0.0.1"
    master_port: int = 0  # rank 0 picks a free port when 0 and reports it
    threads: int | None = None  # torch CPU threads; None: torch's default
    stage_sizes: tuple[int, ...] | None = None  # ranks per pipeline stage; None: one each
    # Backend of each stage's tensor-parallel group (NCCL for a group of GPUs inside a gloo
    # instance); None: `backend` for all. Every rank must know all of them to create the groups.
    stage_backends: tuple[Backend, ...] | None = None
    keep_alive_seconds: float = 60.0  # an idle driver's interval between keep-alives to the others
    quantize: str | None = None  # "int8" / "int4": quantize a 16/32-bit checkpoint as it loads

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")
        for name in ("stage_sizes", "stage_backends"):  # JSON gives lists
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.layout.world_size != self.world_size:
            raise ValueError(f"stage sizes {self.stage_sizes} do not add up to a world of {self.world_size}")
        if len(self.group_backends) != self.layout.num_stages:
            raise ValueError("stage_backends needs one backend per stage")

    @property
    def layout(self) -> InstanceLayout:
        return InstanceLayout(self.stage_sizes or (1,) * self.world_size)

    @property
    def group_backends(self) -> tuple[Backend, ...]:
        return self.stage_backends or (self.backend,) * self.layout.num_stages

    @property
    def stage_index(self) -> int:
        return self.layout.stage_of(self.rank)

    @property
    def tp_rank(self) -> int:
        """This rank's place within its stage's tensor-parallel group (0: the leader)."""
        return self.rank - self.layout.leader(self.stage_index)

    @property
    def tp_size(self) -> int:
        return self.layout.stage_sizes[self.stage_index]

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
