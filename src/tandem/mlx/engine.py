"""The MLX stage engine: one stage of a model on MLX, behind the runner's engine interface
(`engine/interface.py`), beside the PyTorch `ModelRunner`.

It computes on Metal on Apple silicon and on MLX's CPU backend elsewhere; at its boundary it
takes and returns torch CPU tensors (hidden states in the activation dtype, float32 logits), so
the pipeline wire carries plain tensors between an MLX stage and a PyTorch stage. Scheduling,
sampling (torch, on the logits returned here) and detokenization stay shared.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from tandem.engine.blocks import blocks_for, pool_blocks
from tandem.errors import InvalidRequestError
from tandem.mlx.arrays import DTYPE_NAMES, mlx_dtype, to_mlx, to_torch
from tandem.mlx.cache import PagedCache, StepBatch
from tandem.mlx.model import StageModel
from tandem.mlx.weights import load_mlx_stage, parameter_bytes
from tandem.model.config import ModelConfig, context_size, load_model_config
from tandem.model.stage import StageSpec
from tandem.model.step import SequenceChunk, StepPlan
from tandem.protocol.runner import StageReport

WARM_UP_PROMPT_TOKENS = 16
MLX_DEVICES = ("cpu", "metal")
CPU = torch.device("cpu")


def resolve_mlx_device(name: str | None) -> str:
    """`None`/"auto" picks Metal where MLX has it (Apple silicon), else MLX's CPU backend."""
    metal = mx.metal.is_available()
    if name in (None, "auto"):
        return "metal" if metal else "cpu"
    if name not in MLX_DEVICES:
        raise InvalidRequestError(f"unknown MLX device {name!r}; use auto, cpu or metal")
    if name == "metal" and not metal:
        raise InvalidRequestError("the MLX device metal was asked for, but MLX has no Metal GPU here")
    return name


def resolve_mlx_dtype(name: str | None, device: str, config: ModelConfig) -> mx.Dtype:
    """`None`/"auto": float32 on the CPU; on Metal the checkpoint's 16-bit dtype (float16 for a
    float32 checkpoint)."""
    if name not in (None, "auto"):
        return mlx_dtype(name)
    if device == "cpu":
        return mx.float32
    return mlx_dtype(
        config.checkpoint_dtype if config.checkpoint_dtype in ("bfloat16", "float16") else "float16"
    )


class MLXStageEngine:
    """One stage of a model on MLX, with its own paged KV cache."""

    def __init__(self, model: StageModel, num_slots: int, max_context: int, device: str = "cpu") -> None:
        self.model = model
        self.num_slots = num_slots
        self._max_context = max_context
        self.device_name = device
        self.device = mx.gpu if device == "metal" else mx.cpu
        config = model.config
        self.dtype = model.layers[0].input_layernorm.weight.dtype
        # The same pool as the engine's scheduler (`LLMEngine`), which hands out its blocks.
        self.kv_cache = PagedCache(
            list(model.stage.layers),
            pool_blocks(num_slots, max_context),
            config.num_kv_heads,
            config.head_dim,
            self.dtype,
        )

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        stage: StageSpec | None = None,
        num_slots: int = 8,
        max_context: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        config: ModelConfig | None = None,
    ) -> MLXStageEngine:
        """Load `stage` of the checkpoint (the whole model when None) onto MLX: only the
        tensors it owns are read."""
        config = config or load_model_config(model_dir)
        device_name = resolve_mlx_device(device)
        mlx_device = mx.gpu if device_name == "metal" else mx.cpu
        with mx.stream(mlx_device):
            model = load_mlx_stage(model_dir, stage, resolve_mlx_dtype(dtype, device_name, config), config)
            return cls(
                model, num_slots, context_size(max_context, config.max_position_embeddings), device_name
            )

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def stage(self) -> StageSpec:
        return self.model.stage

    @property
    def wire_device(self) -> torch.device:
        return CPU

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def activation_dtype(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def warm_up(self) -> None:
        """Run a short prompt and one decode step (MLX builds its kernels on first use; on Metal
        that takes a while). Writes only into the scratch block, which no sequence reads."""
        length = min(WARM_UP_PROMPT_TOKENS, self.max_context - 1)
        scratch = (self.kv_cache.scratch_block,) * blocks_for(length + 1)
        prompt = StepPlan((SequenceChunk(-1, scratch, 0, (0,) * length, sample=True),))
        decode = StepPlan((SequenceChunk(-1, scratch, length, (0,), sample=True),))
        for plan in (prompt, decode):
            hidden = None
            if not self.stage.is_first:
                hidden = torch.zeros((1, plan.tokens_per_sequence, self.config.hidden_size))
                hidden = hidden.to(getattr(torch, self.activation_dtype))
            self.forward(plan, hidden)

    def release(self, blocks: tuple[int, ...]) -> None:
        """Nothing to do: a block's next sequence overwrites it before reading."""

    def report(self) -> StageReport:
        return StageReport(
            engine="mlx",
            device=self.device_name,
            parameter_bytes=parameter_bytes(self.model),
            kv_cache_bytes=self.kv_cache.bytes(),
        )

    def token_ids(self, plan: StepPlan) -> mx.array:
        """[B, T]; a shorter chunk is padded on the right (its padding's keys and values land past
        the prompt, where decode overwrites them before anything reads them)."""
        T = plan.tokens_per_sequence
        rows = [list(c.token_ids) + [0] * (T - len(c.token_ids)) for c in plan.chunks]
        return mx.array(np.array(rows, dtype=np.int32))

    def logit_rows(self, plan: StepPlan) -> mx.array:
        """Flattened row of each sampled chunk's last token."""
        T = plan.tokens_per_sequence
        rows = [i * T + len(c.token_ids) - 1 for i, c in enumerate(plan.chunks) if c.sample]
        return mx.array(rows, dtype=mx.int32)

    def forward(
        self, plan: StepPlan, hidden: torch.Tensor | None = None, feed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """First stage: reads token ids from the plan, or for a decode step from `feed` (one id a
        chunk) where given. Later stages: take the previous stage's hidden states [B, T, hidden]
        (a torch tensor). Returns hidden states [B, T, hidden], or on the last stage float32
        logits [sampled chunks, vocab], as torch CPU tensors."""
        end = max(c.end for c in plan.chunks)
        if end > self.max_context:
            raise ValueError(f"step reaches position {end} but the cache holds {self.max_context}")
        if not self.stage.is_first and hidden is None:
            raise ValueError("a stage after the first needs the previous stage's hidden states")
        with mx.stream(self.device):
            if not self.stage.is_first:
                assert hidden is not None
                inputs = to_mlx(hidden).astype(self.dtype)  # [B, T, hidden]
            elif feed is not None:
                inputs = to_mlx(feed).astype(mx.int32).reshape(len(plan.chunks), 1)  # [B, 1]
            else:
                inputs = self.token_ids(plan)  # [B, T]
            rows = self.logit_rows(plan) if self.stage.is_last else None
            output = self.model(
                inputs, StepBatch.for_plan(plan, self.kv_cache.scratch_block), self.kv_cache, rows
            )
            # The cache writes are not all in the output's graph (a prompt attends its own keys).
            mx.eval(output, *self.kv_cache.arrays())
        return to_torch(output)
