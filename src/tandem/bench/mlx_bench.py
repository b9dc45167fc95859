"""`tandem bench --engine mlx`: the MLX engine's time to first token and decode speed for a
model shape, beside the PyTorch engine's on the very same random weights in the same run, each
with its floor (weight bytes read per token over the copy bandwidth measured through that
engine's own framework).

The PyTorch engine runs on this machine's CPU (Tandem does not use `mps`); the MLX engine on
Metal where MLX has it, else on MLX's CPU backend.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tandem.bench.measure import context_for, copy_bandwidth, matmul_flops, time_generation
from tandem.bench.report import bytes_read_per_token
from tandem.bench.shapes import named_shape, shape_dir
from tandem.engine.device import DTYPE_NAMES, DTYPES
from tandem.model.config import ModelConfig
from tandem.model.stage import StageSpec
from tandem.runner.assemble import local_spec, start_rank

CPU = torch.device("cpu")


@dataclass
class EngineFigures:
    engine: str  # "torch" or "mlx"
    device: str  # "cpu", "metal"
    dtype: str
    copy_bandwidth: float  # bytes read + written per second, measured through the engine's framework
    matmul_flops: float
    decode_floor_tokens_per_second: float  # copy bandwidth / weight bytes read per token
    ttft_seconds: dict[int, float]
    decode_tokens_per_second: float

    @property
    def fraction_of_floor(self) -> float:
        return self.decode_tokens_per_second / self.decode_floor_tokens_per_second


@dataclass
class MLXBenchReport:
    shape: str
    date: str
    cpu: str
    torch_version: str
    mlx_version: str
    parameters: int
    weight_bytes_read_per_token: int  # in the MLX engine's dtype
    torch: EngineFigures
    mlx: EngineFigures

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def random_tensors(config: ModelConfig, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of the whole model by its Hugging Face name: normal(0, 0.02) matrices, unit
    norms (speed does not depend on the values)."""
    from tandem.engine.models import build_empty_model

    names = build_empty_model(config, StageSpec.whole(config.num_layers)).state_dict()
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, empty in names.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        tensor = torch.empty(empty.shape, dtype=dtype)
        tensors[name] = (
            tensor.fill_(1.0)
            if name.endswith("norm.weight")
            else tensor.normal_(0.0, 0.02, generator=generator)
        )
    return tensors


class MemoryTensors:
    """The bench's random weights (torch, Hugging Face names) as a `tandem.mlx.weights` source."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def read(self, name: str) -> Any:
        from tandem.mlx.arrays import to_mlx

        return to_mlx(self.tensors[name])


def mlx_engine_for(
    config: ModelConfig, weights: dict[str, torch.Tensor], device: str, dtype: str, max_context: int
):
    """An LLMEngine over the MLX stage engine holding `weights` (one slot, batch 1)."""
    import mlx.core as mx

    from tandem.engine.engine import LLMEngine
    from tandem.engine.executor import LocalExecutor
    from tandem.mlx.arrays import mlx_dtype
    from tandem.mlx.engine import MLXStageEngine
    from tandem.mlx.weights import build_stage

    with mx.stream(mx.gpu if device == "metal" else mx.cpu):
        stage = StageSpec.whole(config.num_layers)
        model = build_stage(config, stage, MemoryTensors(weights), mlx_dtype(dtype), None)
        runner = MLXStageEngine(model, num_slots=1, max_context=max_context, device=device)
    return LLMEngine(LocalExecutor(runner), None, frozenset(), max_context, 1, max_context)


def run_mlx_benchmark(
    shape: str, prompt_lengths: list[int], decode_tokens: int, mlx_device: str | None, dtype: str | None
) -> MLXBenchReport:
    """Both engines on one shape's random weights: PyTorch on the CPU, then MLX."""
    from tandem.mlx import require_mlx

    require_mlx("tandem bench --engine mlx")
    import mlx.core as mx

    from tandem.mlx import profile
    from tandem.mlx.arrays import mlx_dtype
    from tandem.mlx.engine import resolve_mlx_device
    from tandem.node.profile import cpu_name

    config, _ = named_shape(shape)
    device = resolve_mlx_device(mlx_device)
    dtype = dtype if dtype not in (None, "auto") else ("float32" if device == "cpu" else "float16")
    # the PyTorch engine on the CPU: the same dtype where the CPU runs it, else float32
    torch_dtype = DTYPES[dtype] if dtype in ("float32", "bfloat16") else torch.float32
    context = context_for(prompt_lengths, decode_tokens)
    torch_read = bytes_read_per_token(config, torch.finfo(torch_dtype).bits // 8)
    torch_bandwidth = copy_bandwidth(CPU)
    spec = local_spec(
        shape_dir(shape),
        device="cpu",
        dtype=DTYPE_NAMES[torch_dtype],
        max_context=context,
        num_slots=1,
        max_prefill_tokens=context,
        random_weights_seed=0,
    )
    torch_engine = start_rank(spec).engine  # what a cluster runner of one rank serves
    assert torch_engine is not None
    timing = time_generation(torch_engine, config.vocab_size, prompt_lengths, decode_tokens, CPU)
    del torch_engine
    torch_figures = EngineFigures(
        engine="torch",
        device="cpu",
        dtype=DTYPE_NAMES[torch_dtype],
        copy_bandwidth=torch_bandwidth,
        matmul_flops=matmul_flops(CPU, torch_dtype),
        decode_floor_tokens_per_second=torch_bandwidth / torch_read,
        ttft_seconds=timing.ttft_seconds,
        decode_tokens_per_second=timing.decode_tokens_per_second,
    )

    mlx_device_handle = mx.gpu if device == "metal" else mx.cpu
    mlx_read = bytes_read_per_token(config, mlx_dtype(dtype).size)
    mlx_bandwidth = profile.copy_bandwidth(mlx_device_handle)
    engine = mlx_engine_for(config, random_tensors(config, torch_dtype), device, dtype, context)
    timing = time_generation(engine, config.vocab_size, prompt_lengths, decode_tokens, CPU)
    mlx_figures = EngineFigures(
        engine="mlx",
        device=device,
        dtype=dtype,
        copy_bandwidth=mlx_bandwidth,
        matmul_flops=profile.matmul_flops(mlx_device_handle, mlx_dtype(dtype)),
        decode_floor_tokens_per_second=mlx_bandwidth / mlx_read,
        ttft_seconds=timing.ttft_seconds,
        decode_tokens_per_second=timing.decode_tokens_per_second,
    )
    return MLXBenchReport(
        shape=shape,
        date=datetime.date.today().isoformat(),
        cpu=cpu_name(),
        torch_version=torch.__version__,
        mlx_version=importlib.metadata.version("mlx"),
        parameters=config.total_parameter_count(),
        weight_bytes_read_per_token=mlx_read,
        torch=torch_figures,
        mlx=mlx_figures,
    )


def format_mlx_report(report: MLXBenchReport) -> list[str]:
    engines = (report.torch, report.mlx)
    lines = [
        f"{report.shape} ({report.parameters / 1e6:.0f}M parameters), batch 1, on {report.cpu}; "
        f"torch {report.torch_version}, mlx {report.mlx_version}",
        f"{'engine':<20} {'copy GB/s':>10} {'GFLOP/s':>9} {'floor tok/s':>12} {'decode tok/s':>13} {'x floor':>8}",
    ]
    for figures in engines:
        lines.append(
            f"{figures.engine + ' ' + figures.device + ' ' + figures.dtype:<20} "
            f"{figures.copy_bandwidth / 1e9:>10.2f} {figures.matmul_flops / 1e9:>9.1f} "
            f"{figures.decode_floor_tokens_per_second:>12.1f} {figures.decode_tokens_per_second:>13.2f} "
            f"{figures.fraction_of_floor:>8.2f}"
        )
    lines.append(f"{'prompt':>8} " + " ".join(f"{f.engine + ' TTFT ms':>16}" for f in engines))
    for length in report.torch.ttft_seconds:
        lines.append(f"{length:>8} " + " ".join(f"{f.ttft_seconds[length] * 1e3:>16.1f}" for f in engines))
    ratio = report.mlx.decode_tokens_per_second / report.torch.decode_tokens_per_second
    lines.append(f"decode: mlx is {ratio:.2f}x the PyTorch engine")
    return lines
