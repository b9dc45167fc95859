"""One rank of a tensor-parallel group, for tests: `python tensor_parallel_worker.py JOB_JSON`.

The job names the rendezvous file, the rank, the group size and the checkpoints. For each
checkpoint the rank builds its lockstep engine over its shard and decodes the prompts (greedy,
together, step by step and again running ahead; then one seeded): every rank runs the same steps in the same order, so their
collectives pair up, and all-gathered logits give every rank the same tokens. Each rank writes
what it saw to its own JSON file.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from tandem.engine.engine import LLMEngine
from tandem.engine.kv_cache import KVCache
from tandem.engine.loader import parameter_bytes
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.engine.parallel.lockstep import create_tensor_parallel_engine
from tandem.errors import InvalidRequestError
from tandem.model.sampling_params import SamplingParams


def last_logits(model, prompt: list[int]) -> list[float]:
    cache = KVCache.for_model(model, num_slots=1, max_length=64)
    positions = torch.arange(len(prompt))[None]
    batch = model.attention_batch(positions, torch.zeros(1, dtype=torch.long), len(prompt))
    with torch.inference_mode():
        return model(torch.tensor([prompt]), batch, cache)[-1].tolist()


def decode_together(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """All prompts at once, sharing steps (fewer steps, so fewer collectives to wait on)."""
    ids = [engine.add_request(prompt, params) for prompt in prompts]
    tokens: dict[int, list[int]] = {seq_id: [] for seq_id in ids}
    while engine.has_work():
        for event in engine.step():
            tokens[event.seq_id].append(event.token_id)
    return [tokens[seq_id] for seq_id in ids]


def main() -> None:
    job = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{job['rendezvous']}", rank=job["rank"], world_size=job["size"]
    )
    group = TensorParallelGroup.from_process_group()
    report = {}
    params = SamplingParams(max_tokens=job["new_tokens"], temperature=0.0, ignore_eos=True)
    for name, path in job["checkpoints"].items():
        engine = create_tensor_parallel_engine(
            path, group, device="cpu", dtype="float32", max_context=128, num_slots=4, max_prefill_tokens=6
        )
        runner = engine.executor.runner
        model = runner.model
        tokens = decode_together(engine, job["prompts"], params)
        engine.executor.run_ahead = True  # each rank queues the next step on its own tokens
        ahead = decode_together(engine, job["prompts"], params)
        engine.executor.run_ahead = None
        seeded = SamplingParams(max_tokens=8, temperature=0.8, seed=7, ignore_eos=True)
        try:
            engine.add_request(job["prompts"][0], SamplingParams(temperature=1.0))
            refusal = None
        except InvalidRequestError as error:
            refusal = str(error)
        report[name] = {
            "tokens": tokens,
            "ahead": ahead,
            "seeded": decode_together(engine, job["prompts"][:1], seeded),
            "refusal": refusal,
            "logits": last_logits(model, job["prompts"][-1]),
            "parameter_bytes": parameter_bytes(model),
            "parameters": {key: list(value.shape) for key, value in model.state_dict().items()},
            # (latent attention's compressed cache has no heads)
            "kv_heads": runner.kv_cache.keys[0].shape[1] if hasattr(runner.kv_cache, "keys") else None,
        }
    with open(job["output"], "w") as handle:
        json.dump(report, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
