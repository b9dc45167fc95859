"""Tensor parallelism on GPUs against one GPU, token for token, through the cluster's runners
(CI checks the same over gloo on CPUs; this is the NCCL, symmetric-memory and CUDA-graph path).

    python tools/check_tensor_parallel_gpu.py [--gpus 2]

Writes a small random checkpoint; for each dtype and each way of summing (NCCL, symmetric memory
fused into the norms) starts an instance of one stage over a group of GPUs — rank 0 here, the
others as runner processes, as a node does — decodes greedily and compares with the single-GPU
engine: float32 must match token for token, bfloat16 is reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import RunnerSpec
from tandem.runner.assemble import create_local_engine, local_spec, start_local_instance
from tandem.settings import EngineOptions

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [7], list(range(100, 160))]
NEW_TOKENS = 48


def write_checkpoint(directory: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=1000,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # wide weights: well-separated logits, so greedy compares implementations
        for name, parameter in model.named_parameters():
            if not name.endswith("norm.weight"):
                parameter.normal_(0.0, 1.5 / parameter.shape[-1] ** 0.5 if "embed" not in name else 1.0)
    model.save_pretrained(directory)


def decode(engine) -> list[list[int]]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    return [[event.token_id for event in engine.generate(prompt, params)] for prompt in PROMPTS]


def group_specs(directory: str, gpus: int, dtype: str, options: EngineOptions) -> list[RunnerSpec]:
    base = replace(
        local_spec(directory, device="cuda:0", dtype=dtype, max_context=256, num_slots=2, options=options),
        world_size=gpus,
        backend="nccl",
        stage_sizes=(gpus,),
    )
    return [replace(base, rank=rank, device=f"cuda:{rank}") for rank in range(gpus)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args()
    directory = os.path.join(tempfile.gettempdir(), "tandem-tp-check")
    write_checkpoint(directory)
    failures = 0
    for dtype in ("float32", "bfloat16"):
        alone = decode(create_local_engine(directory, device="cuda:0", dtype=dtype, max_context=256))
        for label, symmetric in (("NCCL", False), ("symmetric memory", True)):
            specs = group_specs(directory, args.gpus, dtype, EngineOptions(symmetric_all_reduce=symmetric))
            rank, others = start_local_instance(specs, Path(directory) / "ranks.log")
            assert rank.engine is not None
            tokens = decode(rank.engine)
            rank.close()
            for process in others:
                process.wait(timeout=60)
            agree = sum(a == b for x, y in zip(tokens, alone, strict=True) for a, b in zip(x, y, strict=True))
            total = sum(len(x) for x in alone)
            exact = tokens == alone
            print(
                f"TP={args.gpus} {dtype:9} {label:17} ({rank.report.all_reduce}): {agree}/{total} tokens "
                f"agree with one GPU{'' if exact else ' (DIFFERENT)'}",
                flush=True,
            )
            failures += int(dtype == "float32" and not exact)
            torch.distributed.destroy_process_group()
    # Leave without tearing anything else down: after symmetric-memory work that can hang on H100s.
    sys.stdout.flush()
    os._exit(1 if failures else 0)


if __name__ == "__main__":
    main()
