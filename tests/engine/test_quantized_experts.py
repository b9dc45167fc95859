"""Quantized mixtures of experts against `transformers` running the dequantized weights: tiny
DeepSeek-V3, Kimi-K2, Qwen3-MoE and Mixtral checkpoints written FP8-block and compressed-tensors
int4 by the test, and load-time `--quantize int8|int4` of the 16-bit ones, decode with greedy
tokens identical (float32), whole, split into 2 stages and with expert parallelism over 2 ranks;
the routed experts stay compact in memory; activation-ordered experts are refused by name."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from engine.test_quantized import assert_logits_close, our_greedy, prompts, reference_greedy, stage_logits
from moe_checkpoints import MOE_FAMILIES
from quant_moe_checkpoints import QLORA, QUANTIZABLE_SIZES, load_time_moe_twin, quantize_moe_checkpoint
from tandem.engine.kv_cache import KVCache
from tandem.engine.loader import load_stage, parameter_bytes
from tandem.engine.models.moe import Experts
from tandem.engine.quant.experts import QuantizedExperts
from tandem.engine.quant.linear import QuantizedLinear
from tandem.errors import UnsupportedModelError
from tandem.model.stage import LayerRange, StageSpec
from tandem.runner.assemble import create_local_engine

CPU = torch.device("cpu")


def sizes_of(family: str) -> dict:
    model_type = MOE_FAMILIES[family][0]
    sizes = dict(QUANTIZABLE_SIZES["deepseek_v3" if model_type == "kimi_k2" else model_type])
    if MOE_FAMILIES[family][1].get("q_lora_rank"):
        sizes |= QLORA
    return sizes


@pytest.fixture(scope="session")
def moe_source(moe_checkpoint_factory):
    return lambda family: moe_checkpoint_factory(family, **sizes_of(family))


@pytest.fixture(scope="session")
def quantized_moe(tmp_path_factory, moe_source):
    cache: dict[tuple[str, str, bool], object] = {}

    def make(format_name: str, family: str, experts_only: bool = False):
        key = (format_name, family, experts_only)
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"{family}-{format_name}")
            cache[key] = quantize_moe_checkpoint(moe_source(family), directory, format_name, experts_only)
        return cache[key]

    return make


CHECKPOINTS = [
    ("fp8-blocks", "deepseek-v3-qlora-groups"),
    ("fp8-ragged-blocks", "kimi-k2"),
    ("ct-int4-group-sym", "kimi-k2"),  # as Kimi-K2-Thinking ships
    ("ct-int4-group-sym", "qwen3-moe-e6-top3"),
    ("ct-int8-group-asym", "deepseek-v3-direct-q"),
    ("fp8-blocks", "mixtral-e5-top2"),
]


def test_only_the_experts_quantized_as_kimi_k2_thinking_ships(quantized_moe):
    checkpoint = quantized_moe("ct-int4-group-sym", "kimi-k2", experts_only=True)
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", max_prefill_tokens=6)
    for prompt in prompts(checkpoint.config["vocab_size"])[1:]:
        assert our_greedy(engine, prompt) == reference_greedy(checkpoint.model, prompt)
    model = engine.executor.runner.model
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    assert any(isinstance(m, QuantizedExperts) for m in model.modules())


@pytest.mark.parametrize(("format_name", "family"), CHECKPOINTS)
def test_quantized_mixture_decodes_like_its_dequantized_twin(quantized_moe, format_name, family):
    checkpoint = quantized_moe(format_name, family)
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", max_prefill_tokens=6)
    for prompt in prompts(checkpoint.config["vocab_size"]):
        assert our_greedy(engine, prompt) == reference_greedy(checkpoint.model, prompt), (
            f"{family} {format_name}: prompt of {len(prompt)} tokens diverged"
        )
    whole = load_stage(checkpoint.path, None, CPU, torch.float32)
    experts = [m for m in whole.modules() if isinstance(m, (Experts, QuantizedExperts))]
    assert experts and all(isinstance(m, QuantizedExperts) for m in experts)
    prompt = prompts(checkpoint.config["vocab_size"], seed=2)[2]
    with torch.inference_mode():
        expected = checkpoint.model(torch.tensor([prompt])).logits[0]
    assert_logits_close(stage_logits([whole], prompt), expected)


@pytest.mark.parametrize(("format_name", "family"), [CHECKPOINTS[0], CHECKPOINTS[3]])
def test_two_stages_compose_to_the_whole_quantized_mixture(quantized_moe, format_name, family):
    checkpoint = quantized_moe(format_name, family)
    num_layers = checkpoint.config["num_hidden_layers"]
    bounds = [0, 2, num_layers]
    stages = [
        load_stage(checkpoint.path, StageSpec(LayerRange(a, b), num_layers), CPU, torch.float32)
        for a, b in itertools.pairwise(bounds)
    ]
    prompt = prompts(checkpoint.config["vocab_size"])[2]
    with torch.inference_mode():
        expected = checkpoint.model(torch.tensor([prompt])).logits[0]
    assert_logits_close(stage_logits(stages, prompt), expected)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("family", ["deepseek-v3-qlora-groups", "qwen3-moe-step2-yarn"])
def test_load_time_quantized_mixture_matches_the_reference(moe_source, tmp_path, mode, family):
    source = moe_source(family)
    reference = load_time_moe_twin(source, tmp_path / "twin", mode)
    engine = create_local_engine(
        source.path, device="cpu", dtype="float32", quantize=mode, max_prefill_tokens=6
    )
    for prompt in prompts(source.config["vocab_size"]):
        assert our_greedy(engine, prompt) == reference_greedy(reference, prompt), f"{family} {mode} diverged"


def test_quantized_experts_stay_compact(moe_source, quantized_moe):
    source = moe_source("qwen3-moe-e6-top3")
    dense = load_stage(source.path, None, CPU, torch.bfloat16)
    dense_experts = sum(parameter_bytes(m) for m in dense.modules() if isinstance(m, Experts))
    for mode, most in (("int8", 0.56), ("int4", 0.32)):
        model = load_stage(source.path, None, CPU, torch.bfloat16, quantize=mode)
        banks = [m for m in model.modules() if isinstance(m, QuantizedExperts)]
        assert banks and not any(isinstance(m, Experts) for m in model.modules())
        held = {p.dtype for m in banks for name, p in m.named_parameters() if name.endswith("_data")}
        assert held == {torch.int8 if mode == "int8" else torch.uint8}, mode
        assert sum(m.weight_bytes() for m in banks) <= most * dense_experts, mode
    kimi = load_stage(quantized_moe("ct-int4-group-sym", "kimi-k2").path, None, CPU, torch.bfloat16)
    assert {m.bank("down_proj").kind for m in kimi.modules() if isinstance(m, QuantizedExperts)} == {"int4"}


def test_experts_in_activation_order_are_refused(quantized_moe, tmp_path):
    checkpoint = quantized_moe("ct-int4-group-sym", "qwen3-moe-e6-top3")
    directory = tmp_path / "actorder"
    shutil.copytree(checkpoint.path, directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] = "group"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="activation order") as refused:
        create_local_engine(directory, device="cpu", dtype="float32")
    assert "compressed-tensors" in str(refused.value) and "\n" not in str(refused.value)


def test_expert_parallel_ranks_decode_like_one_process(quantized_moe, tmp_path):
    from engine.test_tensor_parallel import expected_tokens, run_group

    checkpoints = {
        "fp8-deepseek": quantized_moe("fp8-blocks", "deepseek-v3-qlora-groups"),
        "int4-qwen3": quantized_moe("ct-int4-group-sym", "qwen3-moe-e6-top3"),
    }
    reports = run_group(2, {name: str(c.path) for name, c in checkpoints.items()}, tmp_path)
    for name, checkpoint in checkpoints.items():
        assert reports[0][name]["tokens"] == expected_tokens(checkpoint), f"{name}: the group of 2 diverged"


def test_the_engine_holds_what_placement_counted(moe_source):
    from tandem.cluster.placement import Placement, PlacementRequest, place
    from tandem.model.shapes import shape_from_hf_config
    from topologies import cluster, gpu, node

    source = moe_source("deepseek-v3-qlora-groups")
    shape = shape_from_hf_config({**source.config, "torch_dtype": "bfloat16"})
    request = PlacementRequest(
        context_length=64, num_sequences=1, memory_margin=0, device_overhead_bytes=0, quantize="int8"
    )
    placement = place(shape, cluster(node("a", gpu(1, 100))), request)
    assert isinstance(placement, Placement), placement.reason
    model = load_stage(source.path, None, CPU, torch.bfloat16, quantize="int8")
    assert parameter_bytes(model) == pytest.approx(placement.stages[0].weight_bytes, rel=0.05)


def test_random_quantized_mixture_stages_draw_one_expert_at_a_time(monkeypatch):
    """What the benchmark's `--quantize` builds: experts quantized, and no tensor drawn larger
    than one expert's projection or the largest dense tensor (never a layer's 16-bit bank)."""
    from tandem.bench.shapes import named_shape
    from tandem.engine.models import build_empty_model
    from tandem.engine.random_weights import RandomCheckpoint, random_stage
    from tandem.model.stage import StageSpec

    config, _ = named_shape("tiny-deepseek")
    drawn: list[tuple[str, int]] = []
    draw = RandomCheckpoint._draw

    def recording(self, name):
        tensor = draw(self, name)
        drawn.append((name, tensor.numel()))
        return tensor

    monkeypatch.setattr(RandomCheckpoint, "_draw", recording)
    moe = config.moe
    assert moe is not None
    bank = moe.num_experts * 2 * moe.expert_intermediate_size * config.hidden_size
    for mode in ("int4", "int8", "fp8"):
        drawn.clear()
        model = random_stage(
            build_empty_model(config, StageSpec.whole(config.num_layers)),
            config,
            CPU,
            torch.bfloat16,
            0,
            mode,
        )
        assert any(isinstance(m, QuantizedExperts) for m in model.modules())
        assert not any(isinstance(m, Experts) for m in model.modules())
        expert_draws = [size for name, size in drawn if ".experts." in name]
        assert expert_draws and max(expert_draws) < bank / moe.num_experts
        cache = KVCache.for_model(model, num_blocks=1)
        positions = torch.arange(5)[None]
        batch = model.attention_batch(positions, torch.zeros(1, 1, dtype=torch.long), 5)
        with torch.inference_mode():
            logits = model(torch.arange(5)[None], batch, cache)
        assert bool(torch.isfinite(logits).all()), mode


@pytest.mark.parametrize(("format_name", "family"), [CHECKPOINTS[0], CHECKPOINTS[2]])
def test_a_stage_reads_only_its_own_quantized_experts(quantized_moe, format_name, family):
    """What a stage reads is its own layer's tensors, each once, and all among the names a
    shard-aware download fetches for it (`stage_tensor_names`)."""
    from engine.test_moe_matches_transformers import CountingCheckpoint
    from tandem.engine.checkpoint import Checkpoint
    from tandem.engine.loader import load_weights, stage_tensor_names
    from tandem.engine.models import build_empty_model
    from tandem.model.config import load_model_config
    from tandem.model.quantization import loaded_format

    checkpoint = quantized_moe(format_name, family)
    config = load_model_config(checkpoint.path)
    stage = StageSpec(LayerRange(2, 3), config.num_layers)
    wanted = stage_tensor_names(build_empty_model(config, stage), config, Checkpoint(checkpoint.path))
    counting = CountingCheckpoint(checkpoint.path)
    model = build_empty_model(config, stage)
    load_weights(
        model, config, counting, CPU, torch.float32, quantization=loaded_format(config.quantization, None)
    )
    assert set(counting.names_read) <= set(wanted)
    assert all(name.startswith("model.layers.2.") for name in counting.names_read)
    data = [name for name in counting.names_read if not name.endswith(".weight_shape")]  # 2 ints, read twice
    assert len(data) == len(set(data))
    assert any(".experts.7." in name for name in counting.names_read)


@pytest.mark.parametrize(("format_name", "family"), [CHECKPOINTS[1], CHECKPOINTS[3]])
def test_bfloat16_on_cpu_chooses_within_rounding_of_the_twin(quantized_moe, format_name, family):
    """The CPU default for quantized weights is bfloat16: each greedy choice is checked against
    the twin teacher-forced with our tokens (two bfloat16 paths may part at near ties)."""
    checkpoint = quantized_moe(format_name, family)
    engine = create_local_engine(checkpoint.path, device="cpu", max_prefill_tokens=6)
    assert engine.executor.runner.model.activation_dtype() == torch.bfloat16  # type: ignore[attr-defined]
    for prompt in prompts(checkpoint.config["vocab_size"])[1:]:
        ours = our_greedy(engine, prompt)
        with torch.inference_mode():
            logits = checkpoint.model(torch.tensor([prompt + ours])).logits[0, len(prompt) - 1 : -1]
        best = logits.max(-1).values
        chosen = logits.gather(-1, torch.tensor(ours)[:, None])[:, 0]
        assert bool(((best - chosen) <= 0.15 * logits.abs().max()).all())
