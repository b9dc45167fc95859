"""An instance over two node processes on loopback whose first stage runs on the PyTorch engine
and whose second on MLX (its node started with `--engine mlx`, so its CPU is offered as an MLX
device): served through the OpenAI API (the official client), it decodes exactly like
`transformers` (greedy, float32), the hidden states crossing between the engines on the gloo
wire as plain tensors."""

from __future__ import annotations

import openai
from mlx_support import random_prompts, reference_greedy, require_mlx

require_mlx()

from nodes import generate, launch, start_node, wait_for  # noqa: E402
from tandem.model.sampling_params import SamplingParams  # noqa: E402
from tandem.model.tokenizer import Tokenizer  # noqa: E402
from tandem.protocol import codec  # noqa: E402

NEW_TOKENS = 16


def engines_of(node) -> dict[tuple[str, str], str]:
    """The engine of each device as the cluster sees it, by (node id, device kind)."""
    return {
        (info["node_id"], device["kind"]): device["engine"]
        for info in node.cluster()["nodes"]
        for device in info["devices"]
    }


def test_a_pytorch_stage_and_an_mlx_stage_serve_one_model_through_the_openai_api(
    tmp_path, checkpoint_factory
):
    checkpoint = checkpoint_factory("qwen2.5-tied")
    first = start_node(tmp_path, "torch-node", [], extra_args=("--models-dir", str(checkpoint.path)))
    second = start_node(tmp_path, "mlx-node", [first.address], extra_args=("--engine", "mlx"))
    try:
        for node in (first, second):
            wait_for(node.cluster, timeout=60, what=f"{node.address} to answer")
        wait_for(lambda: len(first.cluster()["nodes"]) == 2, timeout=30, what="the two nodes to meet")
        torch_id, mlx_id = first.node_id, second.node_id
        engines = engines_of(first)
        assert engines == {(torch_id, "cpu"): "torch", (mlx_id, "cpu"): "mlx"}

        instance = launch(
            first,
            model=str(checkpoint.path),
            devices=[f"{torch_id}/cpu", f"{mlx_id}/cpu"],
            context=128,
            dtype="float32",
        )
        runners = [(runner["node_id"], runner["engine"]) for runner in instance["runners"]]
        assert runners == [(torch_id, "torch"), (mlx_id, "mlx")]  # as each runner reports its stage

        vocab_size = checkpoint.config["vocab_size"]
        prompts = random_prompts((7, 1, 19), vocab_size, seed=5)
        expected = [reference_greedy(checkpoint.model, prompt, NEW_TOKENS) for prompt in prompts]
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        for prompt, tokens in zip(prompts, expected, strict=True):
            events = generate(
                second, instance["instance_id"], prompt_ids=prompt, params=codec.to_json(params)
            )
            assert [e["token_id"] for e in events if e["type"] == "token"] == tokens

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
    finally:
        second.stop()
        first.stop()
