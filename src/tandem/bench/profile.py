"""Where a step's GPU time goes: a captured decode step's replay time, and the kernels of any
work by total GPU time. Used by `tools/profile_decode.py` (one GPU) and `tandem bench --plans ...
--profile` (every plan, tensor-parallel ranks working together so their collectives pair up)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def replay_seconds(graph: torch.cuda.CUDAGraph, repeats: int = 50) -> float:
    """GPU seconds per replay of `graph`, back to back (no host work between replays)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def kernel_table(work: Callable[[], object], repeats: int = 5, rows: int = 18) -> str:
    """The kernels of `repeats` runs of `work`, by total GPU time (torch.profiler's table)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            work()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def decode_graphs(engine) -> dict[int, torch.cuda.CUDAGraph]:
    """The decode graphs `engine` captured, by batch-size bucket (none where it runs without)."""
    graphs = getattr(getattr(engine.executor, "runner", None), "graphs", None)
    if graphs is None:
        return {}
    return {bucket: graph for bucket, (graph, _output) in graphs.graphs.items()}


def batch_one_graph(engine) -> torch.cuda.CUDAGraph | None:
    """The decode graph for one sequence that `engine` captured, if it runs on graphs."""
    return decode_graphs(engine).get(1)
