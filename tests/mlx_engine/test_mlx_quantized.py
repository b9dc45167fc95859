"""MLX affine-quantized checkpoints (what `mlx_lm.convert --quantize` writes and Mac users
download): they load on the MLX engine as quantized layers, and `tandem.engine.affine` dequantizes
them exactly for the PyTorch engine, so both engines decode the same tokens."""

from __future__ import annotations

import json

import pytest
import torch
from mlx_support import (
    assert_logits_close,
    chained_engine,
    random_prompts,
    require_mlx,
    run_together,
)

require_mlx()

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from tandem.engine.affine import (  # noqa: E402
    AffineParams,
    DequantizingCheckpoint,
    dequantize,
    read_affine_scheme,
)
from tandem.engine.engine import LLMEngine  # noqa: E402
from tandem.engine.executor import LocalExecutor  # noqa: E402
from tandem.engine.loader import load_stage  # noqa: E402
from tandem.engine.model_runner import ModelRunner  # noqa: E402
from tandem.errors import ModelFormatError, UnsupportedModelError  # noqa: E402
from tandem.mlx.arrays import to_mlx, to_torch  # noqa: E402
from tandem.mlx.engine import MLXStageEngine  # noqa: E402
from tandem.model.config import load_model_config  # noqa: E402
from tandem.model.sampling_params import SamplingParams  # noqa: E402
from tandem.model.stage import LayerRange, StageSpec  # noqa: E402
from tandem.model.step import SequenceChunk, StepPlan  # noqa: E402
from tandem.runner.assemble import create_local_engine  # noqa: E402

CPU = torch.device("cpu")
# name -> (family, bits, mlx-lm mixed recipe). The tiny models' intermediate size (112) is not a
# multiple of the group size (64): mlx-lm keeps down_proj in float, so every checkpoint mixes
# quantized and float layers. mixed_3_6 lists per-module bits (3 and 6, whose codes cross words).
QUANTIZED = {
    "llama-tied-4bit": ("llama-mha-tied", 4, None),
    "qwen3-8bit": ("qwen3-qknorm", 8, None),
    "qwen2-mixed-3-6": ("qwen2-bias", None, "mixed_3_6"),
}


@pytest.fixture(scope="module")
def quantized_checkpoint(checkpoint_factory, tmp_path_factory):
    from mlx_lm import convert

    made = {}

    def make(name: str):
        if name not in made:
            family, bits, recipe = QUANTIZED[name]
            source = checkpoint_factory(family)
            target = tmp_path_factory.mktemp("mlx-quantized") / name
            convert(
                str(source.path),
                str(target),
                quantize=True,
                q_bits=bits,
                q_group_size=64,
                dtype="float32",
                quant_predicate=recipe,
            )
            made[name] = target
        return made[name]

    return make


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_dequantize_equals_mlx_bit_for_bit(bits, dtype):
    weight = (mx.random.normal((48, 256), key=mx.random.key(bits)) * 0.3).astype(getattr(mx, dtype))
    for group_size in (32, 64, 128):
        packed, scales, biases = mx.quantize(weight, group_size=group_size, bits=bits)
        expected = to_torch(mx.dequantize(packed, scales, biases, group_size=group_size, bits=bits))
        ours = dequantize(
            to_torch(packed), to_torch(scales), to_torch(biases), AffineParams(bits, group_size)
        )
        assert ours.dtype == expected.dtype and ours.shape == expected.shape == (48, 256)
        assert torch.equal(ours, expected), f"{bits} bits, groups of {group_size}, {dtype}"


@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_both_engines_decode_a_quantized_checkpoint_identically(quantized_checkpoint, name):
    path = quantized_checkpoint(name)
    config = load_model_config(path)
    raw = json.loads((path / "config.json").read_text())
    scheme = read_affine_scheme(raw)
    assert scheme is not None

    mlx_engine = create_local_engine(
        path, engine="mlx", device="cpu", dtype="float32", num_slots=3, max_prefill_tokens=12
    )
    torch_model = load_stage(path, None, CPU, torch.float32)
    torch_engine = LLMEngine(
        LocalExecutor(ModelRunner(torch_model, 3, 64, use_graphs=False)), None, frozenset(), 64, 3, 12
    )
    prompts = random_prompts((1, 7, 19, 4), config.vocab_size, seed=21)
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    assert run_together(mlx_engine, prompts, params) == run_together(torch_engine, prompts, params)

    # The MLX engine holds the layers quantized, as stored; the PyTorch engine's dequantized
    # weights equal MLX's own dequantization of them.
    stage = mlx_engine.executor.runner
    quantized = {
        path: module
        for path, module in stage.model.named_modules()
        if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding)
    }
    assert len(quantized) >= 1 + 6 * config.num_layers  # embedding, q/k/v/o/gate/up of every layer
    checkpoint = DequantizingCheckpoint(path, scheme)
    for module_path, module in quantized.items():
        name = stage.model.checkpoint_name(module_path)
        expected = mx.dequantize(
            module.weight, module.scales, module.biases, group_size=module.group_size, bits=module.bits
        )
        assert torch.equal(checkpoint.read(f"{name}.weight"), to_torch(expected)), name
    float_bytes = 4 * config.total_parameter_count()
    assert stage.report().parameter_bytes < 0.6 * float_bytes

    # Logits agree to float32 rounding (same weights, different matrix kernels).
    prompt = prompts[2]
    plan = StepPlan((SequenceChunk(0, (0, 1, 2, 3), 0, tuple(prompt), sample=True),))
    fresh = MLXStageEngine.load(path, None, 1, 64, device="cpu", dtype="float32")
    runner = ModelRunner(torch_model, 1, 64, use_graphs=False)
    with torch.inference_mode():
        assert_logits_close(fresh.forward(plan), runner.forward(plan))


def test_quantized_stages_mix_engines(quantized_checkpoint):
    """Stage 1 quantized on MLX, stage 2 dequantized on PyTorch (its tied head read from the
    quantized embedding): the tokens of the whole model on MLX."""
    path = quantized_checkpoint("llama-tied-4bit")
    config = load_model_config(path)
    first = MLXStageEngine.load(path, StageSpec(LayerRange(0, 2), config.num_layers), 2, 64, "cpu", "float32")
    second_model = load_stage(path, StageSpec(LayerRange(2, 4), config.num_layers), CPU, torch.float32)
    assert second_model.lm_head is not None and second_model.model.embed_tokens is None
    pipeline = chained_engine([first, ModelRunner(second_model, 2, 64, use_graphs=False)], 2, 64, 12)
    whole = create_local_engine(
        path, engine="mlx", device="cpu", dtype="float32", num_slots=2, max_prefill_tokens=12
    )
    prompts = random_prompts((9, 3, 14), config.vocab_size, seed=22)
    params = SamplingParams(max_tokens=15, temperature=0.0, ignore_eos=True)
    assert run_together(pipeline, prompts, params) == run_together(whole, prompts, params)


def test_round_trip_through_torch_keeps_packed_codes(quantized_checkpoint):
    """Packed uint32 codes read by torch (U32 in safetensors) cross back to MLX unchanged."""
    path = quantized_checkpoint("qwen3-8bit")
    checkpoint = DequantizingCheckpoint(
        path, read_affine_scheme(json.loads((path / "config.json").read_text()))
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    packed = super(DequantizingCheckpoint, checkpoint).read(name)
    assert packed.dtype == torch.uint32
    assert checkpoint.shape(name) == (packed.shape[0], packed.shape[1] * 32 // 8)
    assert to_torch(to_mlx(packed.view(torch.int32))).equal(packed.view(torch.int32))


def test_bad_quantization_configs_are_one_line_errors(quantized_checkpoint, tmp_path):
    import shutil

    source = quantized_checkpoint("llama-tied-4bit")
    raw = json.loads((source / "config.json").read_text())
    with pytest.raises(UnsupportedModelError, match="quantization mode 'mxfp4'"):
        read_affine_scheme({**raw, "quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"}})
    with pytest.raises(UnsupportedModelError, match="quantization bits 7"):
        read_affine_scheme({**raw, "quantization": {"group_size": 64, "bits": 7}})
    # A module that holds scales but that the config says is float.
    copy = tmp_path / "contradicts"
    shutil.copytree(source, copy)
    listed = {**raw["quantization"], "model.layers.0.self_attn.q_proj": False}
    (copy / "config.json").write_text(json.dumps({**raw, "quantization": listed}))
    with pytest.raises(ModelFormatError, match=r"model\.layers\.0\.self_attn\.q_proj has scales"):
        MLXStageEngine.load(copy, None, 1, 16, device="cpu")
    with pytest.raises(ModelFormatError, match=r"model\.layers\.0\.self_attn\.q_proj has scales"):
        load_stage(copy, None, CPU, torch.float32)
    # Group size that does not match the stored scales.
    (copy / "config.json").write_text(json.dumps({**raw, "quantization": {"group_size": 32, "bits": 4}}))
    with pytest.raises(ModelFormatError):
        load_stage(copy, None, CPU, torch.float32)
    with pytest.raises(ModelFormatError):
        MLXStageEngine.load(copy, None, 1, 16, device="cpu")
