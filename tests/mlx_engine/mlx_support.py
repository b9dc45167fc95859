"""Helpers for the MLX engine's tests: stages of both engines chained in one process, and the
reference `transformers` decodes they are held to.

(This directory is not named `tests/mlx`: `mlx` is a namespace package, and with `tests/` on
sys.path a `tests/mlx` directory would join it, its files shadowing mlx's own modules.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

MLX_MISSING = "mlx and mlx-lm are not installed (pip install 'tandem-llm[mlx]'; Linux uses mlx[cpu])"


def require_mlx() -> None:
    """Skip the calling module where mlx does not import."""
    pytest.importorskip("mlx.core", reason=MLX_MISSING)
    pytest.importorskip("mlx_lm", reason=MLX_MISSING)


_GREEDY: dict[tuple[int, tuple[int, ...], int], list[int]] = {}


def reference_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy continuation (remembered: several tests ask for the same ones)."""
    key = (id(model), tuple(prompt), new_tokens)
    if key not in _GREEDY:
        _GREEDY[key] = _generate(model, prompt, new_tokens)
    return list(_GREEDY[key])


def _generate(model, prompt: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return output[0, len(prompt) :].tolist()


def reference_logits(model, prompt: list[int]) -> torch.Tensor:
    """transformers' logits at every position of `prompt` ([T, vocab])."""
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0]


def assert_logits_close(ours: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Within `tolerance` of the logits' scale (float32 rounding between implementations)."""
    scale = expected.abs().max().item()
    error = (ours.float() - expected.float()).abs().max().item()
    assert error <= tolerance * scale, f"max logit error {error:.3g} at scale {scale:.3g}"


def random_prompts(lengths: tuple[int, ...], vocab_size: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def load_stage_engine(engine: str, model_dir: Path, stage, num_slots: int, max_context: int):
    """One stage on `engine` ("torch" or "mlx"), CPU and float32."""
    if engine == "mlx":
        from tandem.mlx.engine import MLXStageEngine

        return MLXStageEngine.load(model_dir, stage, num_slots, max_context, device="cpu", dtype="float32")
    from tandem.engine.loader import load_stage
    from tandem.engine.model_runner import ModelRunner

    model = load_stage(model_dir, stage, torch.device("cpu"), torch.float32)
    return ModelRunner(model, num_slots, max_context, use_graphs=False)


class ChainedStages:
    """An executor over the stages of one pipeline in this process: each stage's output (hidden
    states as torch CPU tensors, what the wire carries) is the next one's input, and the last
    stage's logits are sampled, as a pipeline's last rank samples them."""

    def __init__(self, stages: list) -> None:
        from tandem.engine.executor import SamplerStates

        self.stages = stages
        self.samplers = SamplerStates(stages[-1].config.vocab_size, torch.device("cpu"))
        self.hidden_seen: list[torch.Tensor] = []  # what crossed between stages, for inspection

    def start_sequence(self, seq_id, prompt_ids, params) -> None:
        self.samplers.start(seq_id, prompt_ids, params)

    def end_sequence(self, seq_id) -> None:
        self.samplers.end(seq_id)

    def forward(self, plan) -> torch.Tensor:
        hidden = None
        for stage in self.stages[:-1]:
            hidden = stage.forward(plan, hidden)
            self.hidden_seen.append(hidden)
        return self.stages[-1].forward(plan, hidden)

    def execute(self, plan):
        with torch.inference_mode():
            logits = self.forward(plan)
        return self.samplers.sample(plan, logits) if plan.sampled else []


def chained_engine(stages: list, num_slots: int, max_context: int, max_prefill_tokens: int):
    from tandem.engine.engine import LLMEngine

    return LLMEngine(ChainedStages(stages), None, frozenset(), max_context, num_slots, max_prefill_tokens)


def run_together(engine, prompts: list[list[int]], params) -> list[list[int]]:
    """Queue every prompt at once and step until all are done; each one's tokens, in order."""
    ids = [engine.add_request(prompt, params) for prompt in prompts]
    tokens: dict[int, list[int]] = {seq_id: [] for seq_id in ids}
    while engine.has_work():
        for event in engine.step():
            tokens[event.seq_id].append(event.token_id)
    return [tokens[seq_id] for seq_id in ids]
