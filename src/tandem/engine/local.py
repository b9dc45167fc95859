"""Assemble an engine that runs a whole checkpoint in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tandem.engine.device import resolve_device, resolve_dtype
from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.engine.executor import LocalExecutor
from tandem.engine.loader import load_stage
from tandem.engine.model_runner import ModelRunner
from tandem.engine.models.llama import CausalLM
from tandem.engine.tokenizer import Tokenizer
from tandem.model.config import ModelConfig, context_size, load_model_config

DEFAULT_NUM_SLOTS = 8


# Loads the model for (model_dir, device, dtype, config): the whole model, or a shard of it.
ModelLoader = Callable[[Path, torch.device, torch.dtype, ModelConfig], CausalLM]


def assemble_engine(
    model_dir: str | Path,
    load: ModelLoader,
    device: str | None,
    dtype: str | None,
    max_context: int | None,
    num_slots: int,
    max_prefill_tokens: int,
    engine_class: type[LLMEngine] = LLMEngine,
    quantized: bool = False,
) -> LLMEngine:
    """An engine over the model `load` returns, with the checkpoint's tokenizer and stop tokens."""
    model_dir = Path(model_dir)
    config = load_model_config(model_dir)
    torch_device = resolve_device(device)
    quantized = quantized or config.quantization is not None
    torch_dtype = resolve_dtype(dtype, torch_device, config.checkpoint_dtype, quantized)
    context = context_size(max_context, config.max_position_embeddings)
    tokenizer = Tokenizer(model_dir) if (model_dir / "tokenizer.json").is_file() else None
    model = load(model_dir, torch_device, torch_dtype, config)
    runner = ModelRunner(model, num_slots, context)
    eos = tokenizer.eos_token_ids if tokenizer else frozenset(config.eos_token_ids)
    return engine_class(LocalExecutor(runner), tokenizer, eos, context, num_slots, max_prefill_tokens)


def create_local_engine(
    model_dir: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    max_context: int | None = None,
    num_slots: int = DEFAULT_NUM_SLOTS,
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
    quantize: str | None = None,
) -> LLMEngine:
    """An engine over the whole model in this process; `quantize` ("int8", "int4") quantizes a
    16/32-bit checkpoint as it loads (`tandem.model.quantization.load_time_format`)."""

    def load(directory: Path, device: torch.device, dtype: torch.dtype, config: ModelConfig) -> CausalLM:
        return load_stage(directory, None, device, dtype, config=config, quantize=quantize)

    return assemble_engine(
        model_dir,
        load,
        device,
        dtype,
        max_context,
        num_slots,
        max_prefill_tokens,
        quantized=quantize is not None,
    )
