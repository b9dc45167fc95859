"""Expert parallelism in the engine (`models/moe_tp.py`): each rank of a stage's group holds
and reads whole experts of its own, its share of everything else; groups of 2 and 3 real
processes over gloo decode exactly as one process and `transformers`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.test_tensor_parallel import expected_tokens, run_group
from moe_checkpoints import MOE_FAMILIES
from tandem.engine.checkpoint import Checkpoint
from tandem.engine.loader import load_weights, parameter_bytes, stage_tensor_names
from tandem.engine.models import build_empty_model
from tandem.engine.models.moe import SparseMoE
from tandem.engine.parallel.apply import apply_tensor_parallel
from tandem.engine.parallel.group import ProcessGroupAllGather, ProcessGroupAllReduce, TensorParallelGroup
from tandem.engine.parallel.sharding import even_blocks
from tandem.errors import InvalidRequestError
from tandem.model.config import load_model_config
from tandem.model.stage import StageSpec


class NamingCheckpoint(Checkpoint):
    """A checkpoint that records each tensor it reads and how many elements."""

    def __init__(self, model_dir) -> None:
        super().__init__(model_dir)
        self.reads: dict[str, int] = {}

    def read(self, name, rows=None, columns=None):
        tensor = super().read(name, rows, columns)
        self.reads[name] = self.reads.get(name, 0) + tensor.numel()
        return tensor


def load_rank(path: Path, rank: int, size: int):
    config = load_model_config(path)
    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    group = TensorParallelGroup(rank, size, ProcessGroupAllReduce(), ProcessGroupAllGather())
    rule = apply_tensor_parallel(model, group)
    checkpoint = NamingCheckpoint(path)
    load_weights(model, config, checkpoint, torch.device("cpu"), torch.float32, rule)
    return model, checkpoint


def expert_of(name: str) -> tuple[int, int] | None:
    """(layer, expert) of a per-expert checkpoint tensor."""
    parts = name.split(".")
    if "experts" not in parts:
        return None
    at = parts.index("experts")
    return int(parts[2]), int(parts[at + 1])


@pytest.mark.parametrize("size", [2, 3])
def test_each_rank_reads_and_holds_only_its_experts(moe_checkpoint_factory, moe_family, size):
    checkpoint = moe_checkpoint_factory(moe_family)
    config = load_model_config(checkpoint.path)
    moe = config.moe
    assert moe is not None
    reference = dict(checkpoint.model.named_parameters())
    held_experts: set[tuple[int, int]] = set()
    total_expert_elements = 0
    for rank in range(size):
        model, reads = load_rank(checkpoint.path, rank, size)
        block = even_blocks(moe.num_experts, size)[rank]
        experts_read = {expert_of(name) for name in reads.reads if expert_of(name)}
        sparse = [i for i in range(config.num_layers) if config.is_sparse_layer(i)]
        assert experts_read == {(layer, e) for layer in sparse for e in range(block.start, block.end)}
        held_experts |= experts_read
        # Only what the rank holds is read (a tied head reads the embedding rows it holds twice).
        held = sum(p.numel() for p in model.parameters())
        tied_extra = model.model.embed_tokens.weight.numel() if config.tie_word_embeddings else 0
        assert sum(reads.reads.values()) == held + tied_extra
        assert sorted(reads.reads) == stage_tensor_names(model, config, reads)
        for prefix, layer in model.model.layers.items():
            feed_forward = layer.feed_forward
            if isinstance(feed_forward, SparseMoE):
                assert feed_forward.partial is not None  # the block's output is a partial sum
                stacked = feed_forward.experts.gate_up_proj
                whole = reference[f"model.layers.{prefix}.mlp.experts.gate_up_proj"].detach()
                assert torch.equal(stacked, whole[block.start : block.end])
                total_expert_elements += stacked.numel() + feed_forward.experts.down_proj.numel()
        assert parameter_bytes(model) == held * 4
    everything = {
        (layer, e)
        for layer in range(config.num_layers)
        if config.is_sparse_layer(layer)
        for e in range(moe.num_experts)
    }
    assert held_experts == everything  # together the ranks hold every expert once
    per_expert = 3 * config.hidden_size * moe.expert_intermediate_size
    assert total_expert_elements == len(everything) * per_expert


def test_more_ranks_than_experts_is_refused(moe_checkpoint_factory):
    checkpoint = moe_checkpoint_factory("mixtral-window-e3-top1")
    with pytest.raises(InvalidRequestError, match="needs at least 4 experts a layer; the model has 3"):
        load_rank(checkpoint.path, 0, 4)


@pytest.mark.parametrize("size", [2, 3])
def test_groups_decode_like_one_process_and_transformers(moe_checkpoint_factory, tmp_path, size):
    checkpoints = {family: moe_checkpoint_factory(family) for family in sorted(MOE_FAMILIES)}
    reports = run_group(size, {name: str(c.path) for name, c in checkpoints.items()}, tmp_path)
    for family, checkpoint in checkpoints.items():
        alone = expected_tokens(checkpoint)
        leader = reports[0][family]
        assert leader["tokens"] == alone, f"{family}: the group of {size} diverged"
        assert leader["ahead"] == alone, f"{family}: the group of {size} ran ahead astray"
        with torch.inference_mode():
            expected = checkpoint.model(
                torch.tensor([[2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5, 2, 3, 5]])
            ).logits[0, -1]
        ours = torch.tensor(reports[0][family]["logits"])
        assert (ours - expected).abs().max() <= 1e-4 * expected.abs().max(), family


WHOLE_ON_EVERY_RANK = ("input_layernorm", "post_attention_layernorm", "gate", "q_a_proj", "q_a_layernorm")
WHOLE_ON_EVERY_RANK += ("kv_a_proj_with_mqa", "kv_a_layernorm", "q_norm", "k_norm")


@pytest.mark.parametrize("size", [2, 3])
def test_placement_counts_what_each_rank_really_holds(moe_checkpoint_factory, moe_family, size):
    """What `ModelShape.for_group` assumes of a rank (`layer_replicated_parameter_count`, whole
    experts a rank) is what the engine's plan gives it; and the ranks together hold the layer
    once over, but for the parts every rank holds whole."""
    checkpoint = moe_checkpoint_factory(moe_family)
    config = load_model_config(checkpoint.path)
    moe = config.moe
    assert moe is not None
    ranks = [load_rank(checkpoint.path, rank, size)[0] for rank in range(size)]
    for index in range(config.num_layers):
        layers = [model.model.layers[str(index)] for model in ranks]
        for layer in layers:
            whole = sum(
                p.numel()
                for name, p in layer.named_parameters()
                if any(part in name.split(".") for part in WHOLE_ON_EVERY_RANK)
                or name.endswith("o_proj.bias")  # added once, after the sum
            )
            assert whole == config.layer_replicated_parameter_count(index)
        if config.is_sparse_layer(index):
            largest = layers[0].feed_forward.experts
            assert largest.count == -(-moe.num_experts // size)
            assert largest.gate_up_proj.numel() + largest.down_proj.numel() == (
                config.layer_expert_parameter_count(index) * largest.count // moe.num_experts
            )
        kv_heads_replicated = config.mla is None and size > config.num_kv_heads
        if not kv_heads_replicated:
            held = sum(sum(p.numel() for p in layer.parameters()) for layer in layers)
            replicated = config.layer_replicated_parameter_count(index)
            assert held == config.layer_parameter_count(index) + (size - 1) * replicated


@pytest.mark.parametrize("family", ["qwen3-moe-e6-top3", "deepseek-v3-qlora-groups"])
def test_experts_saved_stacked_load_by_their_rows(moe_checkpoint_factory, tmp_path, family):
    """A checkpoint holding experts stacked, as transformers holds them in memory (and the
    benchmark's random weights), loads too: each rank reads its rows of the stacked tensor."""
    import shutil

    from safetensors.torch import save_file

    checkpoint = moe_checkpoint_factory(family)
    directory = tmp_path / "stacked"
    directory.mkdir()
    shutil.copy(checkpoint.path / "config.json", directory / "config.json")
    state = {name: tensor.detach().contiguous() for name, tensor in checkpoint.model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    for rank in range(3):
        per_expert, _ = load_rank(checkpoint.path, rank, 3)
        stacked, reads = load_rank(directory, rank, 3)
        assert not any(".experts.0." in name for name in reads.reads)
        mine, theirs = dict(per_expert.named_parameters()), dict(stacked.named_parameters())
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[name], theirs[name]) for name in mine)
