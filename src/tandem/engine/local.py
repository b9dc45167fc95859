"""Assemble an engine that runs a whole checkpoint in this process."""

from __future__ import annotations

from pathlib import Path

from tandem.engine.config import context_size, load_model_config
from tandem.engine.device import resolve_device, resolve_dtype
from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.engine.executor import LocalExecutor
from tandem.engine.loader import load_stage
from tandem.engine.model_runner import ModelRunner
from tandem.engine.tokenizer import Tokenizer

DEFAULT_NUM_SLOTS = 8


def create_local_engine(
    model_dir: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    max_context: int | None = None,
    num_slots: int = DEFAULT_NUM_SLOTS,
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
) -> LLMEngine:
    config = load_model_config(model_dir)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    context = context_size(max_context, config.max_position_embeddings)
    tokenizer = Tokenizer(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None
    model = load_stage(model_dir, None, torch_device, torch_dtype, config=config)
    runner = ModelRunner(model, num_slots, context)
    eos = tokenizer.eos_token_ids if tokenizer else frozenset(config.eos_token_ids)
    return LLMEngine(LocalExecutor(runner), tokenizer, eos, context, num_slots, max_prefill_tokens)
