"""Assemble an engine that runs a whole checkpoint on MLX in this process: the shared
scheduler, sampling and detokenization (`LLMEngine`, `LocalExecutor`) over `MLXStageEngine`."""

from __future__ import annotations

from pathlib import Path

from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.engine.executor import LocalExecutor
from tandem.engine.grammar import Grammars
from tandem.mlx.engine import MLXStageEngine
from tandem.model.config import load_model_config
from tandem.model.tokenizer import Tokenizer

DEFAULT_NUM_SLOTS = 8


def create_mlx_engine(
    model_dir: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    max_context: int | None = None,
    num_slots: int = DEFAULT_NUM_SLOTS,
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
) -> LLMEngine:
    """An engine over the whole model on MLX (`device`: auto, cpu or metal)."""
    model_dir = Path(model_dir)
    config = load_model_config(model_dir)
    stage_engine = MLXStageEngine.load(
        model_dir, None, num_slots, max_context, device=device, dtype=dtype, config=config
    )
    tokenizer = Tokenizer(model_dir) if (model_dir / "tokenizer.json").is_file() else None
    eos = tokenizer.eos_token_ids if tokenizer else frozenset(config.eos_token_ids)
    executor = LocalExecutor(stage_engine, grammars=Grammars(model_dir, config.vocab_size, eos))
    return LLMEngine(executor, tokenizer, eos, stage_engine.max_context, num_slots, max_prefill_tokens)
