"""The torch-free vocabulary of image models: configs read from a diffusers checkpoint, and
the parameter counts and FLOPs placement plans with, against the real modules."""

from __future__ import annotations

import json

import pytest
import torch

from tandem.cluster.placement import Placement, PlacementRequest, place
from tandem.errors import ModelFormatError, UnsupportedModelError
from tandem.model.image_config import (
    FluxTransformerConfig,
    ImageModelConfig,
    is_image_model_dir,
    load_image_model_config,
    parse_flux_transformer_config,
)
from tandem.model.image_shapes import image_model_shape

GB = 1e9


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_config_from_checkpoint(tiny_flux_factory, variant):
    checkpoint = tiny_flux_factory(variant)
    config = load_image_model_config(checkpoint.path)
    reference = checkpoint.pipeline
    transformer = config.transformer
    assert is_image_model_dir(checkpoint.path)
    assert config.variant == variant
    assert transformer.guidance_embeds == (variant == "dev")
    assert (transformer.num_layers, transformer.num_single_layers, transformer.inner_dim) == (2, 3, 32)
    assert config.latent_channels == 4 and config.vae.scale_factor == 8
    assert config.limits.pixel_multiple == 16
    assert config.clip_max_length == reference.tokenizer.model_max_length
    assert config.scheduler.use_dynamic_shifting == (variant == "dev")
    assert (config.default_steps, config.max_sequence_length) == ((28, 512) if variant == "dev" else (4, 256))
    assert config.vae.scaling_factor == reference.vae.config.scaling_factor
    assert config.vae.shift_factor == reference.vae.config.shift_factor
    # parameter counts from the safetensors headers: the modules' own
    assert config.text_encoder_parameters == _numel(reference.text_encoder)
    assert config.text_encoder_2_parameters == _numel(reference.text_encoder_2)
    assert config.vae_parameters == _numel(reference.vae)


def test_mu_is_flux_pipelines(tiny_flux_factory):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = load_image_model_config(tiny_flux_factory("dev").path).scheduler
    for tokens in (6, 256, 1024, 4096, 8192):
        assert config.mu(tokens) == pytest.approx(calculate_shift(tokens), abs=1e-12)


@pytest.mark.parametrize("guidance", [True, False])
def test_parameter_counts_are_the_modules(guidance):
    """Block, embedder, conditioning and head counts against diffusers' modules (a small
    FLUX-like config, so both the formula's 4× MLP and its modulation widths are exercised)."""
    from diffusers import FluxTransformer2DModel

    raw = dict(
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=3,
        joint_attention_dim=20,
        pooled_projection_dim=12,
        guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4),
    )
    reference = FluxTransformer2DModel(**raw)
    config = parse_flux_transformer_config(raw)
    assert config.double_block_parameter_count() == _numel(reference.transformer_blocks[0])
    assert config.single_block_parameter_count() == _numel(reference.single_transformer_blocks[0])
    assert config.conditioning_parameter_count() == _numel(reference.time_text_embed)
    assert config.embedder_parameter_count() == _numel(reference.x_embedder) + _numel(
        reference.context_embedder
    )
    assert config.head_parameter_count() == _numel(reference.norm_out) + _numel(reference.proj_out)
    assert config.total_parameter_count() == _numel(reference)


def test_flux_dev_shape_is_twelve_billion():
    """FLUX.1-dev: 19 double + 38 single blocks of width 3072, about 11.9 B parameters; a
    1024² image is 4096 tokens beside 512 of text, about 75 TFLOP a step."""
    config = FluxTransformerConfig(guidance_embeds=True)
    assert config.total_parameter_count() == pytest.approx(11.9e9, rel=0.01)
    flops = config.step_flops(image_tokens=4096, text_tokens=512)
    assert 70e12 < flops < 80e12


def _dev_config(name: str = "flux-dev") -> ImageModelConfig:
    from tandem.model.image_config import FlowMatchConfig, VaeConfig

    return ImageModelConfig(
        name=name,
        transformer=FluxTransformerConfig(guidance_embeds=True),
        scheduler=FlowMatchConfig(shift=3.0, use_dynamic_shifting=True),
        vae=VaeConfig(),
    )


def test_shape_for_placement():
    shape = image_model_shape(_dev_config())
    assert shape.num_blocks == 57 and (shape.image_tokens, shape.text_tokens) == (4096, 512)
    assert (
        shape.transformer_parameter_count()
        == FluxTransformerConfig(guidance_embeds=True).total_parameter_count()
    )
    # stages add up to the whole: ends once, conditioning once per stage
    parts = shape.stage_parameters(0, 20) + shape.stage_parameters(20, 57)
    assert parts == shape.transformer_parameter_count() + shape.conditioning_parameters
    assert shape.activation_elements(images=2) == 2 * 4608 * 3072
    assert shape.stage_flops(0, 57, images=1) < FluxTransformerConfig(guidance_embeds=True).step_flops(
        4096, 512
    )
    smaller = image_model_shape(_dev_config(), width=512, height=512)
    assert smaller.image_tokens == 1024 and smaller.stage_flops(0, 57, 1) < shape.stage_flops(0, 57, 1) / 3


def test_the_text_placement_splits_flux_dev_over_two_gpus():
    """12 B bfloat16 parameters (24 GB) do not fit one 16 GB GPU; the same placement that
    splits text models puts the blocks on two, every block exactly once."""
    from topologies import cluster, gpu, node

    shape = image_model_shape(_dev_config()).as_model_shape()
    topology = cluster(node("a", gpu(16)), node("b", gpu(16)))
    plan = place(shape, topology, PlacementRequest(context_length=4608, num_sequences=1))
    assert isinstance(plan, Placement), plan
    assert len(plan.stages) == 2
    assert plan.stages[0].layers.start == 0 and plan.stages[-1].layers.end == 57
    assert plan.stages[0].layers.end == plan.stages[1].layers.start


def test_bad_checkpoints(tmp_path, tiny_flux_factory):
    with pytest.raises(ModelFormatError, match=r"model_index\.json"):
        load_image_model_config(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnsupportedModelError, match="StableDiffusionPipeline"):
        load_image_model_config(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelFormatError, match="transformer/"):
        load_image_model_config(tmp_path)
    with pytest.raises(ModelFormatError, match="axes_dims_rope"):
        parse_flux_transformer_config(dict(attention_head_dim=64, axes_dims_rope=[16, 56, 56]))
    with pytest.raises(UnsupportedModelError, match="SD3Transformer2DModel"):
        parse_flux_transformer_config(dict(_class_name="SD3Transformer2DModel"))


def test_wrong_tensor_shape_is_refused(tmp_path, tiny_flux_factory):
    """A transformer whose config does not match its weights: one line naming the tensor."""
    import shutil

    from tandem.engine.images.loader import load_transformer_stage

    source = tiny_flux_factory("dev").path
    copy = tmp_path / "flux"
    shutil.copytree(source, copy)
    config_path = copy / "transformer" / "config.json"
    raw = json.loads(config_path.read_text())
    raw["joint_attention_dim"] = 48
    config_path.write_text(json.dumps(raw))
    config = load_image_model_config(copy).transformer
    with pytest.raises(ModelFormatError, match=r"context_embedder\.weight has shape"):
        load_transformer_stage(copy, config, None, torch.device("cpu"), torch.float32)


def test_compute_bound_timing_of_a_split_flux_dev():
    """A diffusion step's time per stage is its blocks' FLOPs over its device's matrix rate: on
    two GPUs of one rate, the stages' times add up to the whole transformer's step, and the plan
    carries them (and an image's time) among its notes."""
    from tandem.cluster.image_timing import image_timing, with_image_timing
    from tandem.model.image_shapes import image_seconds
    from topologies import cluster, gpu, node

    shape = image_model_shape(_dev_config())
    topology = cluster(node("a", gpu(16)), node("b", gpu(16)))
    plan = place(shape.as_model_shape(), topology, PlacementRequest(context_length=4608, num_sequences=1))
    assert isinstance(plan, Placement), plan
    rate = topology.nodes[0].devices[0].matmul_flops
    stage_seconds = [shape.stage_step_seconds(s.layers.start, s.layers.end, rate) for s in plan.stages]
    assert sum(stage_seconds) == pytest.approx(shape.stage_flops(0, 57, 1) / rate)
    # one image takes each stage in turn; a second one in flight costs only the slowest stage
    assert image_seconds(stage_seconds, 28) == pytest.approx(28 * sum(stage_seconds))
    assert image_seconds(stage_seconds, 28, images=2) == pytest.approx(
        28 * (sum(stage_seconds) + max(stage_seconds))
    )
    line = image_timing(plan, shape, topology, 28, 1024)
    assert line is not None and line.startswith("compute-bound steps at 1024x1024: stage 1 ")
    assert f"≈ {image_seconds(stage_seconds, 28):.3g} s" in line
    assert with_image_timing(plan, shape, topology, 28, 1024).notes[-1] == line
    with pytest.raises(ValueError, match="positive"):
        shape.stage_step_seconds(0, 57, 0.0)
