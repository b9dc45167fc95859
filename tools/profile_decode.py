"""Where a decode step's time goes on a GPU (for tuning; `tandem bench` is the report).

1. Each weight matrix of the shape as a matrix-vector product: cuBLAS (F.linear) against the
   Triton kernel, in GB/s of weight read.
2. The decode step: CUDA-graph replay alone (GPU time) against a whole engine step (adds the
   host's scheduling, sampling and synchronization), with the Triton products and with cuBLAS.
3. The kernels of one replay, by total time (torch.profiler).

    python tools/profile_decode.py [--shape llama3-8b]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from tandem.bench.measure import prompt_of
from tandem.bench.profile import batch_one_graph, kernel_table, replay_seconds
from tandem.bench.shapes import shape_dir
from tandem.engine.cuda.gemv import gemv
from tandem.engine.engine import LLMEngine
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import local_spec, start_rank
from tandem.settings import EngineOptions


def gpu_seconds(work) -> float:
    """Median GPU time of `work` replayed in a CUDA graph (no launch overhead, as in decode)."""
    import triton.testing

    return triton.testing.do_bench_cudagraph(work) / 1000


def matrix_products(model, tp: int) -> None:
    """Each matrix as a rank of a tensor-parallel group of `tp` holds it (1: whole)."""
    layer = model.model.layers["0"]
    rows = {  # column-parallel: a block of output rows
        "qkv": layer.self_attn.qkv_proj.weight,
        "gate_up": layer.mlp.gate_up_proj.weight,
        "lm_head": model.lm_head.weight,
    }
    columns = {"o": layer.self_attn.o_proj.weight, "down": layer.mlp.down_proj.weight}  # row-parallel
    matrices = {name: w[: w.shape[0] // tp].contiguous() for name, w in rows.items()}
    matrices |= {name: w[:, : w.shape[1] // tp].contiguous() for name, w in columns.items()}
    print(f"tensor parallel {tp}:")
    print(f"{'matrix':>8} {'shape':>16} {'rows':>4} {'cuBLAS GB/s':>12} {'Triton GB/s':>12}")
    for name, weight in matrices.items():
        for rows in (1, 8):
            x = torch.randn(rows, weight.shape[1], device=weight.device, dtype=weight.dtype)
            size = weight.numel() * weight.element_size()
            cublas = size / gpu_seconds(lambda x=x, w=weight: F.linear(x, w))
            triton = size / gpu_seconds(lambda x=x, w=weight: gemv(x, w))
            print(
                f"{name:>8} {tuple(weight.shape)!s:>16} {rows:>4} {cublas / 1e9:>12.0f} {triton / 1e9:>12.0f}"
            )


def engine_with(shape: str, options: EngineOptions) -> LLMEngine:
    """The engine a cluster runner of one rank would serve, with random weights."""
    spec = local_spec(
        shape_dir(shape), device="cuda", dtype="bfloat16", max_context=1024, num_slots=1, options=options
    )
    engine = start_rank(replace(spec, random_weights_seed=0)).engine
    assert engine is not None
    return engine


def decode_step(engine: LLMEngine, label: str) -> torch.cuda.CUDAGraph:
    params = SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True)
    prompt = prompt_of(128, engine.executor.runner.config.vocab_size)  # type: ignore[attr-defined]
    list(engine.generate(prompt, params))
    stamps = [time.perf_counter() for _ in engine.generate(prompt, params)]
    step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    graph = batch_one_graph(engine)
    assert graph is not None, "the decode graph was not captured: is this a CUDA device with Triton?"
    replay = replay_seconds(graph)
    print(
        f"{label}: engine step {step * 1e3:.3f} ms ({1 / step:.1f} tokens/s); graph replay {replay * 1e3:.3f} ms "
        f"({1 / replay:.1f} tokens/s); host share {(step - replay) / step * 100:.0f}%"
    )
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--tp", default="1,2,4", help="the matrices as ranks of these group sizes hold them")
    args = parser.parse_args()
    cublas = engine_with(args.shape, EngineOptions(triton_gemv=False))
    decode_step(cublas, "cuBLAS products")  # measured before the next engine installs its options
    del cublas
    engine = engine_with(args.shape, EngineOptions())
    for tp in (int(n) for n in args.tp.split(",")):
        matrix_products(engine.executor.runner.model, tp)  # type: ignore[attr-defined]
    graph = decode_step(engine, "Triton products")
    print(kernel_table(graph.replay))


if __name__ == "__main__":
    main()
