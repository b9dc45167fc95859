"""The measurements: the device's floors (copy bandwidth, matrix throughput), and the engine's
and the baseline's time to first token and decode speed, with energy from the GPU's counter."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tandem.engine.engine import LLMEngine
from tandem.model.sampling_params import SamplingParams


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `work` (device work included)."""
    for _ in range(warmup):
        work()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        work()
        synchronize(device)
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    size = 2 * 2**30 if device.type == "cuda" else 256 * 2**20
    source = torch.empty(size, dtype=torch.uint8, device=device).random_(0, 255)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), device, repeats=10)
    return 2 * size / seconds


def matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / timed(lambda: a @ b, device, repeats=10)


class EnergyMeter:
    """Joules from the GPU's cumulative energy counter (NVML); None where it cannot be read."""

    def __init__(self, device: torch.device) -> None:
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.read()
        except Exception:  # NVML missing or the counter unsupported: report no energy
            self.handle = None

    def read(self) -> float | None:
        if self.handle is None:
            return None
        import pynvml

        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


@dataclass
class GenerationTiming:
    ttft_seconds: dict[int, float]  # prompt length -> time to first token
    decode_tokens_per_second: float
    joules_per_token: float | None


def prompt_of(length: int, vocab: int, variant: int = 0) -> list[int]:
    """A random prompt of `length` tokens; each `variant` a different one."""
    generator = torch.Generator().manual_seed(length + (variant << 20))
    return torch.randint(0, vocab, (length,), generator=generator).tolist()


_variants = itertools.count(1)


def fresh_prompt(length: int, vocab: int) -> list[int]:
    """A prompt no earlier call returned: timings of prompts are of prompts computed whole, not
    served from the prefix cache (a repeated prompt would be, all but its last block)."""
    return prompt_of(length, vocab, next(_variants))


def context_for(prompt_lengths: list[int], decode_tokens: int) -> int:
    """The context a benchmark engine allocates: its longest prompt (at least 128) plus decode."""
    return max([*prompt_lengths, 128]) + decode_tokens + 8


def time_generation(
    engine: LLMEngine, vocab: int, prompt_lengths: list[int], decode_tokens: int, device: torch.device
) -> GenerationTiming:
    """Time to first token per prompt length, then decode tokens/s at batch 1, through `engine`."""
    first_token = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    ttft = {}
    for length in prompt_lengths:
        ttft[length] = timed(
            lambda n=length: list(engine.generate(fresh_prompt(n, vocab), first_token)),
            device,
            repeats=3,
            warmup=1,
        )
    meter = EnergyMeter(device)
    params = SamplingParams(max_tokens=decode_tokens, temperature=0.0, ignore_eos=True)
    prompt = prompt_of(128, vocab)
    list(engine.generate(prompt, params))  # warm-up: captures the decode graph
    rates, joules = [], []
    for _ in range(3):
        stamps = []
        energy_before = meter.read()
        for _event in engine.generate(prompt, params):
            stamps.append(time.perf_counter())
        energy_after = meter.read()
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        if energy_before is not None and energy_after is not None:
            joules.append((energy_after - energy_before) / len(stamps))
    return GenerationTiming(ttft, sorted(rates)[1], sorted(joules)[1] if joules else None)


def aggregate_throughput(
    engine: LLMEngine, vocab: int, requests: int, prompt_length: int, new_tokens: int
) -> float:
    """Generated tokens per second with `requests` sequences in flight together (greedy). Timed
    on a second round: the first compiles, tunes and captures what its batch sizes need (on a
    GPU a decode graph per batch size, once per process), which is not what serving costs."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)

    def serve_round() -> float:
        for index in range(requests):
            engine.add_request(fresh_prompt(prompt_length + index % 7, vocab), params)
        started = time.perf_counter()
        generated = 0
        while engine.has_work():
            generated += len(engine.step())
        return generated / (time.perf_counter() - started)

    serve_round()
    return serve_round()


def time_transformers(
    model, vocab: int, prompt_lengths: list[int], decode_tokens: int, device: torch.device
) -> GenerationTiming:
    """`transformers` `generate`, eager, batch 1: what a user would otherwise run. Decode speed is
    timed the way the engine's is: from the first generated token to the last, stamped as each
    one is chosen (a stopping criterion that never stops)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stamps(StoppingCriteria):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            synchronize(device)
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def generate(prompt: list[int], new_tokens: int, stamps: Stamps | None = None) -> None:
        ids = torch.tensor([prompt], device=device)
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                stopping_criteria=StoppingCriteriaList([stamps]) if stamps else None,
            )

    ttft = {}
    for length in prompt_lengths:
        prompt = prompt_of(length, vocab)
        ttft[length] = timed(lambda p=prompt: generate(p, 1), device, repeats=3, warmup=1)
    prompt = prompt_of(128, vocab)
    generate(prompt, decode_tokens)  # warm-up
    rates = []
    for _ in range(3):
        stamps = Stamps()
        generate(prompt, decode_tokens, stamps)
        rates.append((len(stamps.times) - 1) / (stamps.times[-1] - stamps.times[0]))
    return GenerationTiming(ttft, sorted(rates)[1], None)
