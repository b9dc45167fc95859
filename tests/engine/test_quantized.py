"""Quantized weights against `transformers` running the dequantized weights: tiny random
checkpoints written by the test in every supported on-disk format (tests/quant_checkpoints.py)
decode with greedy tokens identical and logits within float32 tolerance, whole and split into
stages; load-time `--quantize int8|int4` matches the test's own quantize→dequantize; the weights
stay compact in memory; unsupported configurations are refused with their name."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from quant_checkpoints import FORMATS, load_time_twin
from tandem.engine.kv_cache import KVCache
from tandem.engine.loader import load_stage, parameter_bytes
from tandem.engine.quant.linear import QuantizedEmbedding, QuantizedLinear
from tandem.errors import InvalidRequestError, UnsupportedModelError
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import LayerRange, StageSpec
from tandem.runner.assemble import create_local_engine

NEW_TOKENS = 24
PROMPT_LENGTHS = (1, 7, 19)
CPU = torch.device("cpu")


@pytest.fixture
def sources(quantizable_factory):
    return quantizable_factory


@pytest.fixture
def quantized(quantized_factory):
    return quantized_factory


def prompts(vocab_size: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def reference_greedy(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return output[0, len(prompt) :].tolist()


def our_greedy(engine, prompt: list[int]) -> list[int]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    return [event.token_id for event in engine.generate(prompt, params)]


def stage_logits(stages, prompt: list[int]) -> torch.Tensor:
    positions = torch.arange(len(prompt))[None]
    hidden = torch.tensor([prompt])
    with torch.inference_mode():
        for stage in stages:
            cache = KVCache.for_model(stage, num_blocks=4)
            batch = stage.attention_batch(positions, torch.arange(4)[None], len(prompt))
            hidden = stage(hidden, batch, cache)
    return hidden  # [T, vocab]


def assert_logits_close(ours: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    scale = expected.abs().max().item()
    error = (ours.float() - expected.float()).abs().max().item()
    assert error <= tolerance * scale, f"max logit error {error:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_quantized_checkpoint_decodes_like_its_dequantized_twin(quantized, format_name):
    checkpoint = quantized(format_name)
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", max_prefill_tokens=6)
    for prompt in prompts(checkpoint.config["vocab_size"]):
        assert our_greedy(engine, prompt) == reference_greedy(checkpoint.model, prompt), (
            f"{format_name}: prompt of {len(prompt)} tokens diverged"
        )
    whole = load_stage(checkpoint.path, None, CPU, torch.float32)
    prompt = prompts(checkpoint.config["vocab_size"], seed=2)[2]
    with torch.inference_mode():
        expected = checkpoint.model(torch.tensor([prompt])).logits[0]
    assert_logits_close(stage_logits([whole], prompt), expected)


@pytest.mark.parametrize(
    ("format_name", "family"),
    [
        ("awq-int4", "qwen2-bias"),  # quantized projections with biases
        ("ct-int4-group-sym", "qwen3-qknorm"),
        ("fp8-blocks", "llama-mha-tied"),
        ("gptq-int4-asym-desc-act", "mistral-window"),
    ],
)
def test_other_families_decode_like_their_twins(quantized, format_name, family):
    checkpoint = quantized(format_name, family)
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", max_prefill_tokens=6)
    for prompt in prompts(checkpoint.config["vocab_size"])[1:]:
        assert our_greedy(engine, prompt) == reference_greedy(checkpoint.model, prompt)


@pytest.mark.parametrize(
    "format_name", ["fp8-ragged-blocks", "ct-int8-group-asym", "awq-int4", "gptq-int4-head"]
)
def test_stages_compose_to_the_whole_quantized_model(quantized, format_name):
    checkpoint = quantized(format_name)
    num_layers = checkpoint.config["num_hidden_layers"]
    whole = load_stage(checkpoint.path, None, CPU, torch.float32)
    for cuts in ((2,), (1, 3)):
        bounds = [0, *cuts, num_layers]
        stages = [
            load_stage(checkpoint.path, StageSpec(LayerRange(a, b), num_layers), CPU, torch.float32)
            for a, b in itertools.pairwise(bounds)
        ]
        prompt = prompts(checkpoint.config["vocab_size"])[2]
        assert_logits_close(stage_logits(stages, prompt), stage_logits([whole], prompt))
        assert sum(parameter_bytes(stage) for stage in stages) >= parameter_bytes(whole)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha-tied", "qwen2-bias"])
def test_load_time_quantization_matches_the_same_weights_quantized_by_the_reference(sources, mode, family):
    source = sources(family)
    reference = load_time_twin(source, mode)
    engine = create_local_engine(
        source.path, device="cpu", dtype="float32", quantize=mode, max_prefill_tokens=6
    )
    for prompt in prompts(source.config["vocab_size"]):
        assert our_greedy(engine, prompt) == reference_greedy(reference, prompt), f"{family} {mode} diverged"
    model = load_stage(source.path, None, CPU, torch.float32, quantize=mode)
    prompt = prompts(source.config["vocab_size"], seed=2)[2]
    with torch.inference_mode():
        expected = reference(torch.tensor([prompt])).logits[0]
    assert_logits_close(stage_logits([model], prompt), expected)


def test_quantized_weights_stay_compact(sources, quantized):
    source = sources("llama-gqa")
    dense = parameter_bytes(load_stage(source.path, None, CPU, torch.bfloat16))
    for mode, most in (("int8", 0.56), ("int4", 0.42)):
        model = load_stage(source.path, None, CPU, torch.bfloat16, quantize=mode)
        layers = [m for name, m in model.named_modules() if name.startswith("model.layers.")]
        linears = [m for m in layers if isinstance(m, QuantizedLinear)]
        assert linears and not any(isinstance(m, torch.nn.Linear) for m in layers)
        assert isinstance(model.model.embed_tokens, QuantizedEmbedding)
        assert not any(p.dtype == torch.float32 for p in model.parameters())
        assert parameter_bytes(model) <= most * dense, mode
    for name in ("awq-int4", "fp8-blocks"):
        model = load_stage(quantized(name).path, None, CPU, torch.bfloat16)
        held = {m.kind for m in model.modules() if isinstance(m, QuantizedLinear)}
        assert held == {"int4" if name.startswith("awq") else "fp8"}
        assert type(model.model.embed_tokens) is torch.nn.Embedding  # kept as stored


@pytest.mark.parametrize("format_name", ["awq-int4", "ct-int8-channel-sym", "fp8-blocks", "gptq-int4-head"])
def test_bfloat16_on_cpu_chooses_within_rounding_of_the_twin(quantized, format_name):
    """The CPU default for quantized weights is bfloat16 (torch's packed kernels are fast there);
    greedy paths of two bfloat16 implementations may part at near ties, so each choice is
    checked against the twin teacher-forced with our tokens."""
    checkpoint = quantized(format_name)
    engine = create_local_engine(checkpoint.path, device="cpu", max_prefill_tokens=6)
    assert engine.executor.runner.model.activation_dtype() == torch.bfloat16
    for prompt in prompts(checkpoint.config["vocab_size"])[1:]:
        ours = our_greedy(engine, prompt)
        with torch.inference_mode():
            logits = checkpoint.model(torch.tensor([prompt + ours])).logits[0, len(prompt) - 1 : -1]
        best = logits.max(-1).values
        chosen = logits.gather(-1, torch.tensor(ours)[:, None])[:, 0]
        assert bool(((best - chosen) <= 0.15 * logits.abs().max()).all())


UNSUPPORTED = [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "static"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "e5m2"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "gemv"),
    ({"quant_method": "awq", "bits": 3, "group_size": 128}, "bits 3"),
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "bits 3"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}, "marlin"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "group_size 0"),
    (
        {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float"}}
            },
        },
        "float-quantized",
    ),
    (
        {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128},
                    "input_activations": {"num_bits": 8, "type": "int", "dynamic": True},
                }
            },
        },
        "input_activations",
    ),
    (
        {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 2, "type": "int", "strategy": "group"},
                }
            },
        },
        "num_bits 2",
    ),
]


@pytest.mark.parametrize(("quantization", "named"), UNSUPPORTED, ids=[named for _, named in UNSUPPORTED])
def test_unsupported_quantization_is_refused_with_its_name(sources, tmp_path, quantization, named):
    source = sources("llama-gqa")
    directory = tmp_path / "unsupported"
    shutil.copytree(source.path, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "quantization_config": quantization}))
    with pytest.raises(UnsupportedModelError, match="quantization_config") as refused:
        create_local_engine(directory, device="cpu", dtype="float32")
    message = str(refused.value)
    assert named in message and "supported" in message and "\n" not in message


def test_quantizing_a_quantized_checkpoint_or_an_unknown_mode_is_refused(quantized, sources):
    with pytest.raises(InvalidRequestError, match="already quantized"):
        create_local_engine(quantized("awq-int4").path, device="cpu", dtype="float32", quantize="int8")
    with pytest.raises(InvalidRequestError, match="supported: int8, int4"):
        create_local_engine(sources("llama-gqa").path, device="cpu", dtype="float32", quantize="int3")


def test_the_cpu_int4_layout_holds_the_same_weights(quantized):
    """In bfloat16 a CPU holds int4 weights only in torch's packed layout (outputs padded to 16:
    the head of 296 rows here); read back through the kernel they are the checkpoint's."""
    checkpoint = quantized("gptq-int4-head")
    canonical = load_stage(checkpoint.path, None, CPU, torch.float32)
    packed = load_stage(checkpoint.path, None, CPU, torch.bfloat16)
    for name in ("lm_head", "model.layers.1.mlp.down_proj"):
        ours, theirs = packed.get_submodule(name), canonical.get_submodule(name)
        assert ours.cpu_int4 and not theirs.cpu_int4
        expected = theirs.dequantize()
        # the kernel's scales and offsets are held in bfloat16
        torch.testing.assert_close(
            ours.dequantize(), expected, rtol=0, atol=2e-2 * expected.abs().max().item()
        )
