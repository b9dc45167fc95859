"""Measure quantized weights on this machine: quality beside speed (docs/results.md).

    python tools/measure_quantization.py quality            # demo model: perplexity, logit error
    python tools/measure_quantization.py speed              # tokens/s and peak RSS, every format
    python tools/measure_quantization.py products           # CPU products: bf16, fp32 upcast, packed

quality: the demo model's perplexity on held-out text (the last 2 % of its plain-text token
stream, the validation split `tools/demo_model/train.py` never trains on, rebuilt from the same
source package and tokenized with the shipped tokenizer), in windows of 512 tokens (its training
length), for the shipped bf16 weights and for them quantized (int8, int4 at load; FP8 blocks of
128 written as an FP8 checkpoint and read back); and the largest logit difference against the
unquantized weights over the same windows. All in float32 compute, so only the weights differ.

speed: each (model, weights) in its own process, so its peak RSS is its own: the demo model and a
Llama-3.2-1B-shaped model with random bf16 weights (a checkpoint written once under --work), in
bf16, int8 and int4 (quantized at load). Greedy decode of 64 tokens after a 16-token prompt,
on the CPU in bfloat16; RSS after loading and the peak (VmHWM) are both reported.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools" / "demo_model"))

from tandem.engine.kv_cache import KVCache  # noqa: E402
from tandem.engine.loader import load_stage  # noqa: E402

DEMO = ROOT / "src" / "tandem" / "demo_model"
WINDOW = 512
HELD_OUT = 0.02  # train.py keeps the last 2 % of the plain stream for validation


def held_out_tokens(work: Path) -> list[int]:
    """The validation split of the demo model's plain-text stream, rebuilt as prepare.py builds it."""
    from prepare import fetch_texts
    from tokenizers import Tokenizer

    cache = work / "held_out.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    sources = fetch_texts(work)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    plain = [text.strip() + "\n<|endoftext|>" for _, text in sources]
    ids = [i for doc in plain for i in tokenizer.encode(doc).ids]
    tail = ids[int(len(ids) * (1 - HELD_OUT)) :]
    cache.write_text(json.dumps(tail))
    return tail


def window_logits(model, tokens: list[int]) -> torch.Tensor:
    cache = KVCache.for_model(model, num_slots=1, max_length=len(tokens))
    positions = torch.arange(len(tokens))[None]
    batch = model.attention_batch(
        positions, torch.zeros(1, dtype=torch.long), len(tokens), prompt_from_start=True
    )
    with torch.inference_mode():
        return model(torch.tensor([tokens]), batch, cache)  # [T, vocab]


def fp8_checkpoint(directory: Path) -> Path:
    """The demo checkpoint with its decoder projections in FP8 blocks of 128 (as DeepSeek-V3 ships)."""
    from safetensors.torch import load_file, save_file

    from tandem.engine.quant.quantize import quantize_fp8_blocks

    tensors = load_file(str(DEMO / "model.safetensors"))
    stored = {}
    for name, tensor in tensors.items():
        if name.startswith("model.layers.") and tensor.dim() == 2:
            fp8 = quantize_fp8_blocks(tensor)
            stored[name] = fp8.data
            stored[name.removesuffix("weight") + "weight_scale_inv"] = fp8.scales
        else:
            stored[name] = tensor
    directory.mkdir(parents=True, exist_ok=True)
    save_file(stored, str(directory / "model.safetensors"))
    config = json.loads((DEMO / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((DEMO / name).read_bytes())
    return directory


def quality(work: Path) -> list[dict]:
    tokens = held_out_tokens(work)
    windows = [tokens[i : i + WINDOW + 1] for i in range(0, len(tokens) - WINDOW, WINDOW)]
    cpu = torch.device("cpu")
    models = {
        "bf16 (as shipped)": load_stage(DEMO, None, cpu, torch.float32),
        "int8 (per channel)": load_stage(DEMO, None, cpu, torch.float32, quantize="int8"),
        "int4 (groups of 128)": load_stage(DEMO, None, cpu, torch.float32, quantize="int4"),
        "fp8 (blocks of 128×128)": load_stage(fp8_checkpoint(work / "demo-fp8"), None, cpu, torch.float32),
    }
    rows = []
    reference_logits = [window_logits(models["bf16 (as shipped)"], w[:-1]) for w in windows]
    for name, model in models.items():
        loss, count, worst, scale = 0.0, 0, 0.0, 0.0
        for window, reference in zip(windows, reference_logits, strict=True):
            logits = window_logits(model, window[:-1])
            targets = torch.tensor(window[1:])
            loss += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
            worst = max(worst, (logits - reference).abs().max().item())
            scale = max(scale, reference.abs().max().item())
        rows.append(
            {
                "weights": name,
                "perplexity": math.exp(loss / count),
                "tokens": count,
                "max_logit_difference": worst,
                "logit_scale": scale,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


LLAMA_1B = "llama3.2-1b"


def one_b_checkpoint(work: Path) -> Path:
    """A Llama-3.2-1B-shaped checkpoint with random bf16 weights (written once)."""
    from safetensors.torch import save_file

    from tandem.bench.shapes import named_shape
    from tandem.engine.models import build_empty_model
    from tandem.engine.random_weights import fill_random
    from tandem.model.stage import StageSpec

    directory = work / "llama-3.2-1b-random"
    if (directory / "model.safetensors").is_file():
        return directory
    config, raw = named_shape(LLAMA_1B)
    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    model.fuse_projections = lambda: None  # type: ignore[method-assign]  # keep the checkpoint's names
    model = fill_random(model, torch.device("cpu"), torch.bfloat16, seed=0)
    weights = {
        k: v
        for k, v in model.state_dict().items()
        if not (config.tie_word_embeddings and k == "lm_head.weight")
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({**raw, "torch_dtype": "bfloat16"}))
    return directory


def speed_one(model_dir: str, quantize: str | None, new_tokens: int) -> dict:
    """In this process: load, decode, report (run by `speed`, one process per configuration)."""
    import psutil

    from tandem.model.sampling_params import SamplingParams
    from tandem.runner.assemble import create_local_engine

    started = time.perf_counter()
    engine = create_local_engine(model_dir, device="cpu", num_slots=1, quantize=quantize, max_context=256)
    loaded = time.perf_counter() - started
    rss_loaded = psutil.Process().memory_info().rss
    prompt = list(range(1, 17))
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    times = []
    for _ in engine.generate(prompt, params):
        times.append(time.perf_counter())
    decode = (len(times) - 1) / (times[-1] - times[0])
    model = engine.executor.runner.model
    from tandem.engine.loader import parameter_bytes

    return {
        "weights": quantize or "bf16",
        "dtype": str(model.activation_dtype()).removeprefix("torch."),
        "parameter_bytes": parameter_bytes(model),
        "load_seconds": loaded,
        "decode_tokens_per_second": decode,
        "rss_after_load_bytes": rss_loaded,
        "peak_rss_bytes": peak_rss(),
    }


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def speed(work: Path, new_tokens: int) -> list[dict]:
    rows = []
    for label, directory in (("demo", DEMO), ("Llama-3.2-1B shape", one_b_checkpoint(work))):
        for quantize in (None, "int8", "int4"):
            command = [
                sys.executable,
                __file__,
                "speed-one",
                str(directory),
                quantize or "none",
                str(new_tokens),
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            row = {"model": label, **json.loads(result.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def products() -> list[dict]:
    """Decode- and prefill-sized products with one Llama-3.2-1B MLP weight (8192 × 2048)."""
    from tandem.engine.quant import cpu as kernels
    from tandem.engine.quant.linear import QuantizedLinear
    from tandem.engine.quant.quantize import quantize_weight
    from tandem.model.quantization import load_time_format

    torch.manual_seed(0)
    weight = torch.randn(8192, 2048) * 0.02
    bf16 = weight.bfloat16()
    layers = {}
    for mode in ("int8", "int4"):
        layer = QuantizedLinear(2048, 8192, bias=False)
        layer.set_weight(quantize_weight(weight, load_time_format(mode).layers, torch.bfloat16))
        layer.prepare_for_cpu(torch.bfloat16)
        layers[mode] = layer

    def timed(work, repeats: int) -> float:
        work()
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        return (time.perf_counter() - started) / repeats

    rows = []
    for rows_count in (1, 4, 16, 64, 256):
        x = torch.randn(rows_count, 2048).bfloat16()
        repeats = max(2, 64 // rows_count)
        with torch.inference_mode():
            row = {
                "rows": rows_count,
                "bf16_ms": timed(lambda x=x: torch.nn.functional.linear(x, bf16), repeats) * 1e3,
                "fp32_upcast_per_product_ms": timed(lambda x=x: kernels.upcast_product(x, bf16), repeats)
                * 1e3,
                "int8_ms": timed(lambda x=x: layers["int8"](x), repeats) * 1e3,
                "int4_ms": timed(lambda x=x: layers["int4"](x), repeats) * 1e3,
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("quality", "speed", "products", "speed-one"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tandem-quantization")
    parser.add_argument("--new-tokens", type=int, default=64)
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    if options.what == "speed-one":
        model_dir, quantize, new_tokens = options.args
        print(json.dumps(speed_one(model_dir, None if quantize == "none" else quantize, int(new_tokens))))
    elif options.what == "quality":
        quality(options.work)
    elif options.what == "speed":
        speed(options.work, options.new_tokens)
    else:
        products()


if __name__ == "__main__":
    main()
