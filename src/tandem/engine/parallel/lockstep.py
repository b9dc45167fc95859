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

import torch

from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.engine.local import assemble_engine
from tandem.engine.models.llama import CausalLM
from tandem.engine.parallel.apply import load_tensor_parallel_stage
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.errors import InvalidRequestError
from tandem.model.config import ModelConfig
from tandem.model.sampling_params import SamplingParams


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

    def load(directory: Path, device: torch.device, dtype: torch.dtype, config: ModelConfig) -> CausalLM:
        return load_tensor_parallel_stage(directory, None, group, device, dtype, config)

    engine = assemble_engine(
        model_dir,
        load,
        device,
        dtype,
        max_context,
        num_slots,
        max_prefill_tokens,
        engine_class=LockstepEngine,
    )
    assert isinstance(engine, LockstepEngine)
    return engine
