"""Tensor parallelism in the engine: who holds which heads, what each rank reads and holds, and
groups of 2, 3, 4 and 8 real processes over gloo decoding exactly as one process and
`transformers`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoints import FAMILIES
from nodes import free_port
from runner_processes import TEST_RENDEZVOUS_TOKEN
from tandem.engine.checkpoint import Checkpoint
from tandem.engine.loader import load_weights, parameter_bytes
from tandem.engine.models import build_empty_model
from tandem.engine.parallel.apply import apply_tensor_parallel
from tandem.engine.parallel.group import ProcessGroupAllGather, ProcessGroupAllReduce, TensorParallelGroup
from tandem.engine.parallel.sharding import attention_shard, even_blocks
from tandem.errors import InvalidRequestError
from tandem.model.config import load_model_config
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import StageSpec
from tandem.runner.assemble import create_local_engine
from tandem.settings import RENDEZVOUS_TOKEN_VARIABLE

WORKER = Path(__file__).with_name("tensor_parallel_worker.py")
PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [7], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5, 2, 3, 5]]
NEW_TOKENS = 12


@pytest.mark.parametrize(
    ("heads", "kv_heads", "size"),
    [(h, k, n) for h in (4, 6, 8, 12) for k in (1, 2, 3, 4, 8) for n in (1, 2, 3, 4, 5)],
)
def test_every_query_head_on_one_rank_with_the_kv_head_it_uses(heads, kv_heads, size):
    if heads % kv_heads or size > heads:
        return
    group = heads // kv_heads
    seen = []
    for rank in range(size):
        shard = attention_shard(heads, kv_heads, rank, size)
        local_heads = shard.query_heads.size
        assert local_heads % len(shard.kv_heads) == 0  # grouped-query attention needs whole groups
        local_group = local_heads // len(shard.kv_heads)
        for local in range(local_heads):
            head = shard.query_heads.start + local
            assert shard.kv_heads[local // local_group] == head // group  # the KV head it really uses
            seen.append(head)
        if size <= kv_heads:
            assert len(set(shard.kv_heads)) == len(shard.kv_heads)  # enough KV heads: none replicated
    assert seen == list(range(heads))


def test_more_ranks_than_heads_is_refused():
    with pytest.raises(InvalidRequestError, match="needs at least 5 attention heads"):
        attention_shard(4, 2, 0, 5)


class CountingCheckpoint(Checkpoint):
    """A checkpoint that counts the elements each read returns."""

    elements_read = 0

    def read(self, name, rows=None, columns=None):
        tensor = super().read(name, rows, columns)
        self.elements_read += tensor.numel()
        return tensor


def load_rank(path: Path, rank: int, size: int):
    """Rank `rank`'s shard of the whole model, loaded in this process (loading communicates
    nothing), and how many checkpoint elements it read."""
    config = load_model_config(path)
    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    group = TensorParallelGroup(rank, size, ProcessGroupAllReduce(), ProcessGroupAllGather())
    rule = apply_tensor_parallel(model, group)
    checkpoint = CountingCheckpoint(path)
    load_weights(model, config, checkpoint, torch.device("cpu"), torch.float32, rule)
    return model, checkpoint.elements_read


def expected_share(config, rank: int, size: int, kv_heads_held: int) -> int:
    """Parameters rank `rank` must hold: its blocks of the split tensors, every replicated one."""
    hidden, head_dim = config.hidden_size, config.head_dim
    if size <= config.num_kv_heads:
        query_heads = even_blocks(config.num_kv_heads, size)[rank].size * config.num_kv_groups
    else:
        query_heads = even_blocks(config.num_attention_heads, size)[rank].size
    inner = even_blocks(config.intermediate_size, size)[rank].size
    vocab = even_blocks(config.vocab_size, size)[rank].size
    q_width, kv_width = query_heads * head_dim, kv_heads_held * head_dim
    layer = 2 * hidden * q_width + 2 * hidden * kv_width + 3 * hidden * inner + 2 * hidden
    layer += (q_width + 2 * kv_width) if config.qkv_bias else 0
    layer += hidden if config.o_bias else 0
    layer += (2 * inner + hidden) if config.mlp_bias else 0
    layer += 2 * head_dim if config.qk_norm else 0
    ends = vocab * hidden + hidden + (0 if config.tie_word_embeddings else vocab * hidden)
    return config.num_layers * layer + ends


@pytest.mark.parametrize("size", [2, 3])
def test_each_rank_reads_and_holds_only_its_share(checkpoint_factory, family, size):
    checkpoint = checkpoint_factory(family)
    config = load_model_config(checkpoint.path)
    full = {name: tensor.detach() for name, tensor in checkpoint.model.state_dict().items()}
    head_dim, group = config.head_dim, config.num_kv_groups
    for rank in range(size):
        model, elements_read = load_rank(checkpoint.path, rank, size)
        attention = model.model.layers["1"].self_attn
        kv_heads_held = attention.k_proj.out_features // head_dim
        share = expected_share(config, rank, size, kv_heads_held)
        assert parameter_bytes(model) == share * 4
        tied_copy = vocab_rows = model.model.embed_tokens.weight.shape[0]
        assert elements_read == share + (tied_copy * config.hidden_size if config.tie_word_embeddings else 0)
        # Each local query head's KV head holds the rows of the KV head that query head uses.
        keys = full["model.layers.1.self_attn.k_proj.weight"].view(-1, head_dim, config.hidden_size)
        local_keys = attention.k_proj.weight.view(-1, head_dim, config.hidden_size)
        local_heads = attention.q_proj.out_features // head_dim
        first = (
            even_blocks(config.num_kv_heads, size)[rank].start * group
            if size <= config.num_kv_heads
            else even_blocks(config.num_attention_heads, size)[rank].start
        )
        queries = full["model.layers.1.self_attn.q_proj.weight"][
            first * head_dim : (first + local_heads) * head_dim
        ]
        assert torch.equal(attention.q_proj.weight, queries)
        for local in range(local_heads):
            held = local_keys[local // (local_heads // kv_heads_held)]
            assert torch.equal(held, keys[(first + local) // group])
        assert vocab_rows == even_blocks(config.vocab_size, size)[rank].size


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


def run_group(size: int, checkpoints: dict[str, str], directory: Path) -> list[dict]:
    """Start `size` worker processes as one gloo group; returns each rank's report."""
    ports = [free_port() for _ in checkpoints]
    processes, outputs = [], []
    for rank in range(size):
        output = directory / f"rank-{size}-{rank}.json"
        job = dict(
            ports=ports,
            rank=rank,
            size=size,
            checkpoints=checkpoints,
            prompts=PROMPTS,
            new_tokens=NEW_TOKENS,
            output=str(output),
        )
        env = {**os.environ, RENDEZVOUS_TOKEN_VARIABLE: TEST_RENDEZVOUS_TOKEN}  # as a node hands it over
        processes.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(job)], env=env))
        outputs.append(output)
    codes = [process.wait(timeout=300) for process in processes]
    assert codes == [0] * size
    return [json.loads(output.read_text()) for output in outputs]


_EXPECTED: dict[Path, list[list[int]]] = {}


def expected_tokens(checkpoint) -> list[list[int]]:
    """Greedy tokens of one process, checked against `transformers` on the way (once per checkpoint)."""
    if checkpoint.path in _EXPECTED:
        return _EXPECTED[checkpoint.path]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32", max_prefill_tokens=6)
    alone = [[event.token_id for event in engine.generate(prompt, params)] for prompt in PROMPTS]
    assert alone == [reference_greedy(checkpoint.model, prompt) for prompt in PROMPTS], checkpoint.name
    _EXPECTED[checkpoint.path] = alone
    return alone


@pytest.mark.parametrize(
    ("size", "families"),
    [
        (2, tuple(sorted(FAMILIES))),
        (3, tuple(sorted(FAMILIES))),
        (4, ("llama-mha-tied", "qwen2.5-tied")),  # a query head a rank; 2 KV heads over 4 ranks
        (8, ("qwen2.5-tied",)),  # as on an 8-GPU host: a query head a rank, KV heads replicated
    ],
)
def test_groups_decode_like_one_process_and_transformers(checkpoint_factory, tmp_path, size, families):
    checkpoints = {family: checkpoint_factory(family) for family in families}
    reports = run_group(size, {name: str(c.path) for name, c in checkpoints.items()}, tmp_path)
    for family, checkpoint in checkpoints.items():
        alone = expected_tokens(checkpoint)
        leader = reports[0][family]
        assert leader["tokens"] == alone, f"{family}: the group of {size} diverged"
        assert leader["ahead"] == alone, f"{family}: the group of {size} ran ahead astray"
        assert len(leader["seeded"][0]) == len(leader["sampled"][0]) == 8  # the leader samples alone
        with torch.inference_mode():
            expected = checkpoint.model(torch.tensor([PROMPTS[-1]])).logits[0, -1]
        ours = torch.tensor(reports[0][family]["logits"])
        assert (ours - expected).abs().max() <= 1e-4 * expected.abs().max(), family
