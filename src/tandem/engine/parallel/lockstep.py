"""A tensor-parallel engine for programs that run every rank alike (a benchmark under torchrun).

Every rank builds the same engine and feeds it the same requests in the same order. The
all-gathered logits are the same on every rank, so greedy or seeded sampling picks the same
tokens everywhere, every rank schedules the same steps, and the collectives inside each forward
pass pair up. Unseeded random sampling would let the ranks choose differently and part ways, so
it is refused. (The cluster's runners work differently: one rank samples and leads the others.)

    dist.init_process_group("nccl")            # torchrun sets rank and world size
    group = TensorParallelGroup.from_process_group()
    engine = create_tensor_parallel_engine(model_dir, group, device=f"cuda:{group.rank}")
    for event in engine.generate(prompt_ids, SamplingParams(temperature=0, max_tokens=128)): ...
"""

from __future__ import annotations

from pathlib import Path

from tandem.engine.config import context_size, load_model_config
from tandem.engine.device import resolve_device, resolve_dtype
from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.engine.executor import LocalExecutor
from tandem.engine.model_runner import ModelRunner
from tandem.engine.parallel.apply import load_tensor_parallel_stage
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.tokenizer import Tokenizer
from tandem.errors import InvalidRequestError


class LockstepEngine(LLMEngine):
    """An engine over this rank's shard that refuses sampling which could differ between ranks."""

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        if params.temperature > 0 and params.seed is None:
            raise InvalidRequestError(
                "every rank of a lockstep tensor-parallel engine samples on its own: "
                "use temperature 0 or give a seed"
            )
        return super().add_request(prompt_ids, params)


def create_tensor_parallel_engine(
    model_dir: str | Path,
    group: TensorParallelGroup,
    device: str | None = None,
    dtype: str | None = None,
    max_context: int | None = None,
    num_slots: int = 8,
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
) -> LockstepEngine:
    """This rank's engine over its shard of the whole model (see the module doc for how to use it)."""
    config = load_model_config(model_dir)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    context = context_size(max_context, config.max_position_embeddings)
    tokenizer = Tokenizer(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None
    model = load_tensor_parallel_stage(model_dir, None, group, torch_device, torch_dtype, config)
    executor = LocalExecutor(ModelRunner(model, num_slots, context))
    eos = tokenizer.eos_token_ids if tokenizer else frozenset(config.eos_token_ids)
    return LockstepEngine(executor, tokenizer, eos, context, num_slots, max_prefill_tokens)
