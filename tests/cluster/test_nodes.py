"""Three real node processes on loopback: they find each other, agree on a coordinator, place a
model across all three (as a pipeline, and with a tensor-parallel stage across two of them), and
generate exactly what one process and `transformers` generate."""

from __future__ import annotations

import signal

import pytest
import torch

from nodes import generate, launch, running_nodes, start_node, wait_for
from tandem.engine.loader import parameter_bytes
from tandem.engine.parallel.apply import load_tensor_parallel_stage
from tandem.engine.parallel.group import ProcessGroupAllGather, ProcessGroupAllReduce, TensorParallelGroup
from tandem.model.config import load_model_config
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import LayerRange, StageSpec
from tandem.protocol import codec
from tandem.runner.assemble import create_local_engine

PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8], [1] * 3]


def all_see(nodes, count: int) -> bool:
    views = [node.cluster() for node in nodes]
    return all(len(view["nodes"]) == count for view in views) and len({v["coordinator"] for v in views}) == 1


def test_three_nodes_run_a_model_split_across_all_of_them(tmp_path, checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    with running_nodes(tmp_path, 3, extra_args=("--models-dir", str(checkpoint.path))) as nodes:
        wait_for(lambda: all_see(nodes, 3), timeout=30, what="three nodes to see each other")
        ids = [node.node_id for node in nodes]
        instance = launch(
            nodes[1], model=str(checkpoint.path), devices=[f"{i}/cpu" for i in ids], context=128
        )
        assert [runner["node_id"] for runner in instance["runners"]] == ids

        # Each runner holds exactly its share of the weights (the embedding on the first, the head on the last).
        config = load_model_config(checkpoint.path)
        for runner in instance["runners"]:
            start, end = runner["layers"]["start"], runner["layers"]["end"]
            expected = (end - start) * config.layer_parameter_count()
            expected += config.embedding_parameter_count() if start == 0 else 0
            expected += config.head_parameter_count() if end == config.num_layers else 0
            assert runner["parameter_bytes"] == expected * 4  # float32 on CPU

        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
        params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        for index, prompt in enumerate(PROMPTS):
            taker = nodes[index % 3]  # any node takes requests for the instance
            events = generate(taker, instance["instance_id"], prompt_ids=prompt, params=codec.to_json(params))
            tokens = [e["token_id"] for e in events if e["type"] == "token"]
            expected_tokens = [e.token_id for e in engine.generate(prompt, params)]
            reference = checkpoint.model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt)),
                max_new_tokens=24,
                min_new_tokens=24,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
            assert tokens == expected_tokens == reference
            assert events[0] == {
                "type": "accepted",
                "request_id": events[0]["request_id"],
                "prompt_tokens": len(prompt),
                "tool_format": None,  # no tools offered
            }
            assert events[-1]["finish_reason"] == "length"


def test_a_stage_runs_as_a_tensor_parallel_group_across_two_nodes(tmp_path, checkpoint_factory):
    checkpoint = checkpoint_factory("qwen2.5-tied")  # 8 heads, 2 KV heads
    with running_nodes(tmp_path, 3, extra_args=("--models-dir", str(checkpoint.path))) as nodes:
        wait_for(lambda: all_see(nodes, 3), timeout=30, what="three nodes to see each other")
        a, b, c = (node.node_id for node in nodes)
        instance = launch(
            nodes[2], model=str(checkpoint.path), devices=[f"{a}/cpu+{b}/cpu", f"{c}/cpu"], context=128
        )
        runners = instance["runners"]
        assert [(r["rank"], r["node_id"], r["stage"]) for r in runners] == [(0, a, 0), (1, b, 0), (2, c, 1)]
        assert runners[0]["layers"] == runners[1]["layers"]
        # Each rank of the group holds its shard: what loading that shard in this process holds.
        config = load_model_config(checkpoint.path)
        stage = StageSpec(
            LayerRange(runners[0]["layers"]["start"], runners[0]["layers"]["end"]), config.num_layers
        )
        for rank in (0, 1):
            group = TensorParallelGroup(rank, 2, ProcessGroupAllReduce(), ProcessGroupAllGather())
            shard = load_tensor_parallel_stage(
                checkpoint.path, stage, group, torch.device("cpu"), torch.float32
            )
            assert runners[rank]["parameter_bytes"] == parameter_bytes(shard)

        engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        for index, prompt in enumerate(PROMPTS[:2]):
            events = generate(
                nodes[index], instance["instance_id"], prompt_ids=prompt, params=codec.to_json(params)
            )
            tokens = [e["token_id"] for e in events if e["type"] == "token"]
            assert tokens == [e.token_id for e in engine.generate(prompt, params)]


def test_a_node_with_another_secret_is_not_admitted(tmp_path):
    with running_nodes(tmp_path, 2) as nodes:
        wait_for(lambda: all_see(nodes, 2), what="two nodes to meet")
        intruder = start_node(tmp_path, "intruder", [nodes[0].address], secret="another-secret-abcdefghijkl")
        try:
            wait_for(intruder.cluster, what="the intruder to start")
            wait_for(lambda: "signature" in nodes[0].log_text(), what="the refusal in the log")
            assert all(len(node.cluster()["nodes"]) == 2 for node in nodes)
            assert len(intruder.cluster()["nodes"]) == 1
        finally:
            intruder.stop()


def test_the_coordinator_leaves_and_another_takes_over_with_the_state(tmp_path, checkpoint_factory):
    checkpoint = checkpoint_factory("qwen3-qknorm")
    with running_nodes(tmp_path, 3, extra_args=("--models-dir", str(checkpoint.path))) as nodes:
        wait_for(lambda: all_see(nodes, 3), what="three nodes to meet")
        coordinator = nodes[0].cluster()["coordinator"]
        survivors = [node for node in nodes if node.node_id != coordinator]
        leaving = next(node for node in nodes if node.node_id == coordinator)
        instance = launch(
            survivors[1], model=str(checkpoint.path), devices=[f"{n.node_id}/cpu" for n in survivors]
        )
        leaving.stop(signal.SIGKILL)
        wait_for(lambda: all_see(survivors, 2), timeout=20, what="the survivors to agree")
        view = survivors[1].cluster()
        assert view["coordinator"] in {n.node_id for n in survivors}
        assert [i["instance_id"] for i in view["instances"]] == [instance["instance_id"]]
        events = generate(
            survivors[1],
            instance["instance_id"],
            prompt_ids=[1, 2, 3],
            params={"max_tokens": 5, "temperature": 0},
        )
        assert len([e for e in events if e["type"] == "token"]) == 5


@pytest.mark.parametrize(
    "bad", [{"model": "/nonexistent/model"}, {"model": "demo", "devices": ["nobody/cpu"]}]
)
def test_bad_launch_requests_get_clear_errors(tmp_path, bad):
    with running_nodes(tmp_path, 1) as (node,):
        response = node.http.post("/v1/instances", json=bad)
        assert response.status_code == 400
        assert response.json()["error"]
