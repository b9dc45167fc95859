"""The engine interface a runner drives: one rank's part of one pipeline stage, whichever
framework computes it (PyTorch here, MLX in `tandem.mlx`).

The runner never looks inside: it loads a stage engine for its spec, warms it up, runs step
plans through it, frees the cache of sequences that ended and reports what it holds. Hidden
states and logits cross this interface as torch tensors on `wire_device` (the CPU for an engine
that computes elsewhere), because the wire between stages is `torch.distributed`; they carry
only plain data (dtype, shape, bytes), so a PyTorch stage and an MLX stage can follow each
other in one pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec
from tandem.model.step import StepPlan
from tandem.protocol.runner import StageReport

if TYPE_CHECKING:
    import torch


class StageEngine(Protocol):
    """One rank's part of one stage of a model."""

    @property
    def config(self) -> ModelConfig: ...

    @property
    def stage(self) -> StageSpec: ...

    @property
    def wire_device(self) -> torch.device:
        """Where `forward` takes hidden states and returns its output."""
        ...

    @property
    def max_context(self) -> int: ...

    def forward(
        self, plan: StepPlan, hidden: torch.Tensor | None = None, feed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run one step. The first stage reads token ids from the plan (or, for a decode step,
        from `feed`: one id a chunk, already on the device); later stages take the previous
        stage's hidden states [B, T, hidden]. Returns hidden states [B, T, hidden], or on the
        last stage float32 logits [sampled chunks, vocab]."""
        ...

    def warm_up(self) -> None:
        """Compile and tune before the first request (every rank of a group together)."""
        ...

    def release(self, blocks: tuple[int, ...]) -> None:
        """A sequence that held cache `blocks` ended: they may be reused."""
        ...

    def report(self) -> StageReport: ...
