"""Tensor parallelism on GPUs against one GPU, token for token (CI checks the same over gloo on
CPUs; this is the NCCL, symmetric-memory and CUDA-graph path).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tools/check_tensor_parallel_gpu.py

Rank 0 writes a small random checkpoint; every rank loads its shard and decodes greedily in
lockstep, with NCCL, with the symmetric-memory all-reduce, and with it fused into the norms; rank 0 compares with the
single-GPU engine: float32 must match token for token, bfloat16 is reported.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist

from tandem.engine.cuda.symmetric import SymmetricMemoryAllReduce, symmetric_memory_available
from tandem.engine.local import create_local_engine
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.engine.parallel.lockstep import create_tensor_parallel_engine
from tandem.model.sampling_params import SamplingParams

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


def main() -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:  # a dry run of the same steps on CPUs over gloo
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
    directory = os.path.join(tempfile.gettempdir(), "tandem-tp-check")
    if dist.get_rank() == 0:
        write_checkpoint(directory)
    dist.barrier()
    failures = 0
    for dtype in ("float32", "bfloat16") if device.type == "cuda" else ("float32",):
        collectives = {"NCCL": None}
        if device.type == "cuda" and symmetric_memory_available():
            collectives["symmetric memory"] = SymmetricMemoryAllReduce(
                dist.group.WORLD, device, getattr(torch, dtype)
            )
            collectives["fused with norm"] = SymmetricMemoryAllReduce(
                dist.group.WORLD, device, getattr(torch, dtype), width=512
            )
        for label, all_reduce in collectives.items():
            group = TensorParallelGroup.from_process_group(None, all_reduce=all_reduce)
            engine = create_tensor_parallel_engine(
                directory, group, device=str(device), dtype=dtype, max_context=256, num_slots=2
            )
            tokens = decode(engine)
            if dist.get_rank() == 0:
                alone = decode(
                    create_local_engine(directory, device=str(device), dtype=dtype, max_context=256)
                )
                agree = sum(
                    a == b for x, y in zip(tokens, alone, strict=True) for a, b in zip(x, y, strict=True)
                )
                total = sum(len(x) for x in alone)
                exact = tokens == alone
                print(
                    f"TP={dist.get_world_size()} {dtype:9} {label:17}: {agree}/{total} tokens agree with one GPU"
                    f"{'' if exact else ' (DIFFERENT)'}",
                    flush=True,
                )
                failures += int(dtype == "float32" and not exact)
            dist.barrier()
    # Leave without tearing the group down: after symmetric-memory work that can hang on H100s.
    sys.stdout.flush()
    os._exit(1 if failures else 0)


if __name__ == "__main__":
    main()
