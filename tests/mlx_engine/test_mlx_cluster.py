"""Instances over two node processes on loopback whose first stage runs on the PyTorch engine
and whose second on MLX (its node started with `--engine mlx`, so its CPU is offered as an MLX
device), the hidden states crossing between the engines on the gloo wire as plain tensors:
- a float32 checkpoint, served through the OpenAI API (the official client), decodes exactly
  like `transformers` (greedy);
- an MLX 4-bit checkpoint (one download for both engines: dequantized on the PyTorch stage,
  held quantized on the MLX one) decodes exactly like the PyTorch engine alone."""

from __future__ import annotations

import openai
import pytest
from mlx_support import random_prompts, reference_greedy, require_mlx

require_mlx()

from nodes import NodeProcess, generate, launch, start_node, wait_for  # noqa: E402
from tandem.model.sampling_params import SamplingParams  # noqa: E402
from tandem.model.tokenizer import Tokenizer  # noqa: E402
from tandem.protocol import codec  # noqa: E402
from tandem.runner.assemble import create_local_engine  # noqa: E402

NEW_TOKENS = 16
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def two_engines(tmp_path_factory):
    """(the PyTorch node, the MLX node), each offering its CPU; the first offers the checkpoints
    the session's tests build (`--models-dir`) and those written to `models`."""
    directory = tmp_path_factory.mktemp("mixed-cluster")
    offered = ("--models-dir", str(tmp_path_factory.getbasetemp()), "--models-dir", str(directory / "models"))
    first = start_node(directory, "torch-node", [], extra_args=offered)
    second = start_node(directory, "mlx-node", [first.address], extra_args=("--engine", "mlx"))
    try:
        for node in (first, second):
            wait_for(node.cluster, timeout=60, what=f"{node.address} to answer")
        wait_for(lambda: len(first.cluster()["nodes"]) == 2, timeout=30, what="the two nodes to meet")
        yield first, second, directory / "models"
    finally:
        second.stop()
        first.stop()


def engines_of(node: NodeProcess) -> dict[tuple[str, str], str]:
    """The engine of each device as the cluster sees it, by (node id, device kind)."""
    return {
        (info["node_id"], device["kind"]): device["engine"]
        for info in node.cluster()["nodes"]
        for device in info["devices"]
    }


def launch_mixed(first: NodeProcess, second: NodeProcess, model: str) -> dict:
    """The model over both nodes: its first stage on the PyTorch node, its second on MLX."""
    torch_id, mlx_id = first.node_id, second.node_id
    instance = launch(
        first, model=model, devices=[f"{torch_id}/cpu", f"{mlx_id}/cpu"], context=128, dtype="float32"
    )
    runners = [(runner["node_id"], runner["engine"]) for runner in instance["runners"]]
    assert runners == [(torch_id, "torch"), (mlx_id, "mlx")]  # as each runner reports its stage
    return instance


def tokens_from(node: NodeProcess, instance: dict, prompt: list[int]) -> list[int]:
    events = generate(node, instance["instance_id"], prompt_ids=prompt, params=codec.to_json(GREEDY))
    return [e["token_id"] for e in events if e["type"] == "token"]


def test_a_pytorch_stage_and_an_mlx_stage_serve_one_model_through_the_openai_api(
    two_engines, checkpoint_factory
):
    first, second, _ = two_engines
    assert engines_of(first) == {(first.node_id, "cpu"): "torch", (second.node_id, "cpu"): "mlx"}
    checkpoint = checkpoint_factory("qwen2.5-tied")
    instance = launch_mixed(first, second, str(checkpoint.path))

    prompts = random_prompts((7, 1, 19), checkpoint.config["vocab_size"], seed=5)
    expected = [reference_greedy(checkpoint.model, prompt, NEW_TOKENS) for prompt in prompts]
    for prompt, tokens in zip(prompts, expected, strict=True):
        assert tokens_from(second, instance, prompt) == tokens

    tokenizer = Tokenizer(checkpoint.path)
    with openai.OpenAI(base_url=f"{first.url}/v1", api_key="unused", max_retries=0) as client:
        for prompt, tokens in zip(prompts, expected, strict=True):
            reply = client.completions.create(
                model=instance["model"],
                prompt=prompt,
                max_tokens=NEW_TOKENS,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            assert reply.usage is not None and reply.usage.completion_tokens == NEW_TOKENS
            assert reply.choices[0].text == tokenizer.decode(tokens)


def test_an_mlx_4bit_checkpoint_is_one_download_for_both_stages(two_engines, checkpoint_factory):
    from mlx_lm import convert

    first, second, models = two_engines
    source = checkpoint_factory("llama-mha-tied")
    path = models / "llama-4bit"
    convert(str(source.path), str(path), quantize=True, q_bits=4, q_group_size=64, dtype="float32")
    instance = launch_mixed(first, second, str(path))

    alone = create_local_engine(path, device="cpu", dtype="float32")  # the PyTorch engine, dequantized
    for prompt in random_prompts((9, 3), source.config["vocab_size"], seed=9):
        expected = [event.token_id for event in alone.generate(prompt, GREEDY)]
        assert tokens_from(first, instance, prompt) == expected
