"""One rank of a tensor-parallel group, for tests: `python tensor_parallel_worker.py JOB_JSON`.

The job names the rank, the group size, a rendezvous port per checkpoint and the checkpoints.
For each checkpoint every rank builds itself with `start_rank` (the cluster's path: rank 0
drives a tensor-parallel executor, the others follow it) and rank 0 decodes the prompts
(greedy, together; again running ahead; then seeded and unseeded sampling). Then every rank
computes one prompt's logits directly through its shard, in lockstep, and writes what it saw
to its own JSON file.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from tandem.engine.engine import LLMEngine
from tandem.engine.kv_cache import KVCache
from tandem.engine.loader import parameter_bytes
from tandem.model.config import load_model_config
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import RunnerSpec
from tandem.runner.assemble import start_rank


def last_logits(model, prompt: list[int]) -> list[float]:
    cache = KVCache.for_model(model, num_blocks=4)
    positions = torch.arange(len(prompt))[None]
    batch = model.attention_batch(positions, torch.arange(4)[None], len(prompt))
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


def spec_for(job: dict, path: str, port: int) -> RunnerSpec:
    layers = load_model_config(path).num_layers
    return RunnerSpec(
        instance_id="test",
        rank=job["rank"],
        world_size=job["size"],
        model_dir=path,
        layer_start=0,
        layer_end=layers,
        num_layers=layers,
        device="cpu",
        dtype="float32",
        max_context=128,
        num_slots=4,
        max_prefill_tokens=6,
        master_port=port,
        threads=1,
        stage_sizes=(job["size"],),
    )


def main() -> None:
    job = json.loads(sys.argv[1])
    report = {}
    params = SamplingParams(max_tokens=job["new_tokens"], temperature=0.0, ignore_eos=True)
    for (name, path), port in zip(job["checkpoints"].items(), job["ports"], strict=True):
        rank = start_rank(spec_for(job, path, port))
        seen: dict = {}
        if rank.engine is None:
            rank.serve()
        else:
            engine = rank.engine
            seen["tokens"] = decode_together(engine, job["prompts"], params)
            engine.executor.run_ahead = True  # type: ignore[attr-defined]  # followers keep and feed
            seen["ahead"] = decode_together(engine, job["prompts"], params)
            engine.executor.run_ahead = None  # type: ignore[attr-defined]
            seeded = SamplingParams(max_tokens=8, temperature=0.8, seed=7, ignore_eos=True)
            seen["seeded"] = decode_together(engine, job["prompts"][:1], seeded)
            unseeded = SamplingParams(max_tokens=8, temperature=1.0, ignore_eos=True)
            seen["sampled"] = decode_together(engine, job["prompts"][:1], unseeded)
            rank.close()  # the followers' serve loops return
        model = rank.stage.model
        seen |= {
            "logits": last_logits(model, job["prompts"][-1]),  # every rank together: collectives pair
            "parameter_bytes": parameter_bytes(model),
            "parameters": {key: list(value.shape) for key, value in model.state_dict().items()},
            # (latent attention's compressed cache has no heads)
            "kv_heads": cache.keys[0].shape[1] if hasattr(cache := rank.stage.kv_cache, "keys") else None,
        }
        report[name] = seen
        dist.destroy_process_group()
    with open(job["output"], "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
