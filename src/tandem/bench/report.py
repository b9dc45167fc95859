"""Running a benchmark and reporting it: every speed beside its floor and its baseline."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tandem.bench.measure import context_for, copy_bandwidth, matmul_flops, time_generation, time_transformers
from tandem.bench.shapes import named_shape, shape_dir
from tandem.bench.weights import transformers_model
from tandem.engine.device import DTYPE_NAMES
from tandem.engine.model_runner import ModelRunner
from tandem.model.config import ModelConfig
from tandem.runner.assemble import local_spec, start_rank


@dataclass
class BenchReport:
    device: str
    torch_version: str
    shape: str
    dtype: str
    parameters: int
    weights: str  # the dtype, or the quantized format
    weight_bytes_read_per_token: int  # every weight once, but only one row of the embedding
    copy_bandwidth: float  # bytes/s, read + written
    matmul_flops: float
    decode_floor_tokens_per_second: float
    engine: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    peak_memory_bytes: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def bytes_read_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    """Weights one decoded token reads: every layer's (of a sparse one the router, the shared
    experts and its top-k experts only), the head, one embedding row."""
    layers = sum(config.layer_parameters_read(i) for i in range(config.num_layers))
    return (layers + config.head_parameter_count() + config.hidden_size) * dtype_bytes


def model_bytes_read_per_token(model: torch.nn.Module) -> int:
    """What one decoded token reads of a loaded model: every weight it holds once, but only one
    row of an embedding that is not also the head (quantized weights at their real size)."""
    held = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in held.values())
    embedding: torch.nn.Module = model.model.embed_tokens  # type: ignore[union-attr,assignment]
    head: torch.nn.Module = model.lm_head  # type: ignore[assignment]
    tables = [p for p in embedding.parameters() if p.dim() == 2]
    if not tables or any(p is q for p in tables for q in head.parameters()):
        return total  # a tied head reads the whole table anyway
    table = sum(p.numel() * p.element_size() for p in embedding.parameters())
    return total - table + table // tables[0].shape[0]


def prefill_floor_seconds(config: ModelConfig, prompt_length: int, flops: float) -> float:
    """Matrix work of a prompt over the measured throughput: 2 FLOPs per parameter a token uses
    (a mixture's top-k experts, not all), plus causal attention (QK^T and PV, half the square)."""
    active = sum(config.layer_parameters_read(i) for i in range(config.num_layers))
    dense = 2 * (active + config.head_parameter_count()) * prompt_length
    head_dim = config.mla.qk_head_dim if config.mla is not None else config.head_dim
    attention = 2 * 2 * config.num_layers * config.num_attention_heads * head_dim * prompt_length**2 / 2
    return (dense + attention) / flops


def run_benchmark(
    shape: str,
    device: torch.device,
    dtype: torch.dtype,
    prompt_lengths: list[int],
    decode_tokens: int,
    baseline: bool,
    quantize: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchReport:
    """`quantize` (int8, int4, fp8) runs the engine on the same weights quantized; the baseline
    stays `transformers` in `dtype`. `progress` gets a line as each step begins."""
    config, raw = named_shape(shape)
    dtype_bytes = torch.finfo(dtype).bits // 8
    progress("measuring the floors: copy bandwidth and matrix throughput")
    bandwidth = copy_bandwidth(device)
    flops = matmul_flops(device, dtype)
    read = bytes_read_per_token(config, dtype_bytes)
    report = BenchReport(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch_version=torch.__version__,
        shape=shape,
        dtype=DTYPE_NAMES[dtype],
        parameters=config.total_parameter_count(),
        weights=quantize or DTYPE_NAMES[dtype],
        weight_bytes_read_per_token=read,
        copy_bandwidth=bandwidth,
        matmul_flops=flops,
        decode_floor_tokens_per_second=bandwidth / read,
    )
    if baseline:
        progress("the baseline: transformers generate on random weights")
        reference = transformers_model(raw, device, dtype)
        timing = time_transformers(reference, config.vocab_size, prompt_lengths, decode_tokens, device)
        report.baseline = {
            "name": "transformers generate (eager)",
            "ttft_seconds": timing.ttft_seconds,
            "decode_tokens_per_second": timing.decode_tokens_per_second,
        }
        del reference
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    context = context_for(prompt_lengths, decode_tokens)
    spec = local_spec(
        shape_dir(shape),
        device=str(device),
        dtype=DTYPE_NAMES[dtype],
        max_context=context,
        num_slots=1,
        max_prefill_tokens=context,
        random_weights_seed=0,
        quantize=quantize,
    )
    progress("building the engine with random weights")
    rank = start_rank(spec)  # what a cluster runner of one rank serves
    engine = rank.engine
    assert engine is not None
    if quantize is not None:  # the floor of what the quantized weights really read
        assert isinstance(rank.stage, ModelRunner)  # a PyTorch-engine spec
        read = report.weight_bytes_read_per_token = model_bytes_read_per_token(rank.stage.model)
        report.decode_floor_tokens_per_second = bandwidth / read
    progress("timing the prompts, then the decode")
    timing = time_generation(engine, config.vocab_size, prompt_lengths, decode_tokens, device)
    report.engine = {
        "ttft_seconds": timing.ttft_seconds,
        "prefill_floor_seconds": {n: prefill_floor_seconds(config, n, flops) for n in prompt_lengths},
        "decode_tokens_per_second": timing.decode_tokens_per_second,
        "decode_bytes_per_second": timing.decode_tokens_per_second * read,
        "fraction_of_floor": timing.decode_tokens_per_second / report.decode_floor_tokens_per_second,
        "joules_per_token": timing.joules_per_token,
    }
    if device.type == "cuda":
        report.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return report


def amount(value: float, unit: str) -> str:
    """A quantity in the unit that reads right: 40 GB, 1.2 TFLOP, 350 kB."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            scaled = value / scale
            return f"{scaled:.{0 if scaled >= 100 else 1 if scaled >= 10 else 2}f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def rate(per_second: float, unit: str) -> str:
    """A rate in the unit that reads right: a CPU's 40 GB/s and 1.2 TFLOP/s, a GPU's 3.1 TB/s."""
    return f"{amount(per_second, unit)}/s"


def format_report(report: BenchReport) -> list[str]:
    engine = report.engine
    lines = [
        f"{report.shape} {report.weights} on {report.device} (torch {report.torch_version}), batch 1",
        f"floors: copy {rate(report.copy_bandwidth, 'B')}, matmul {rate(report.matmul_flops, 'FLOP')}; "
        f"{amount(report.weight_bytes_read_per_token, 'B')} read per token -> decode floor "
        f"{report.decode_floor_tokens_per_second:.1f} tokens/s",
        f"{'prompt':>8} {'TTFT ms':>9} {'floor ms':>9} {'x floor':>8} {'prefill tok/s':>14}"
        + (f" {'baseline ms':>12}" if report.baseline else ""),
    ]
    for length, seconds in engine["ttft_seconds"].items():
        floor = engine["prefill_floor_seconds"][length]
        line = f"{length:>8} {seconds * 1e3:>9.1f} {floor * 1e3:>9.1f} {seconds / floor:>8.2f} {length / seconds:>14.0f}"
        if report.baseline:
            line += f" {report.baseline['ttft_seconds'][length] * 1e3:>12.1f}"
        lines.append(line)
    decode = engine["decode_tokens_per_second"]
    lines.append(
        f"decode: {decode:.1f} tokens/s = {rate(engine['decode_bytes_per_second'], 'B')}, "
        f"{engine['fraction_of_floor'] * 100:.0f}% of the floor"
    )
    if report.baseline:
        base = report.baseline["decode_tokens_per_second"]
        lines.append(
            f"baseline ({report.baseline['name']}): {base:.1f} tokens/s -> engine is {decode / base:.2f}x"
        )
    if engine.get("joules_per_token") is not None:
        lines.append(f"energy: {engine['joules_per_token']:.2f} J per decoded token")
    if report.peak_memory_bytes:
        lines.append(f"peak GPU memory (engine): {report.peak_memory_bytes / 1e9:.1f} GB")
    return lines
