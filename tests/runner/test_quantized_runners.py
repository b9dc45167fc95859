"""Quantized checkpoints (and load-time quantization) in runner processes: a pipeline of two
stages and a tensor-parallel group of two, over gloo on loopback, decode the greedy tokens of
`transformers` running the dequantized weights (and of one process)."""

from __future__ import annotations

import pytest
import torch

from quant_checkpoints import load_time_twin
from runner_processes import generate_all, start_instance, stop
from tandem.engine.checkpoint import Checkpoint
from tandem.engine.loader import load_weights
from tandem.engine.models import build_empty_model
from tandem.engine.parallel.apply import apply_tensor_parallel
from tandem.engine.parallel.group import ProcessGroupAllGather, ProcessGroupAllReduce, TensorParallelGroup
from tandem.errors import UnsupportedModelError
from tandem.model.config import load_model_config
from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import StageSpec
from tandem.protocol.runner import Ready
from tandem.runner.assemble import create_local_engine

PROMPTS = {"a": [3, 1, 4, 1, 5, 9, 2, 6], "b": [2, 7, 1, 8], "c": [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]}
NEW_TOKENS = 12


def reference_tokens(model) -> dict[str, list[int]]:
    tokens = {}
    for name, prompt in PROMPTS.items():
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
        tokens[name] = output[0, len(prompt) :].tolist()
    return tokens


def instance_tokens(path, num_layers: int, stage_sizes: tuple[int, ...], quantize: str | None = None):
    runners = start_instance(path, num_layers, stage_sizes, quantize=quantize)
    try:
        ready = [runner.next_event(timeout=120) for runner in runners]
        assert all(isinstance(event, Ready) for event in ready), ready
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
        return generate_all(runners[0], PROMPTS, params)
    finally:
        stop(runners)


@pytest.mark.parametrize(
    ("format_name", "stage_sizes"),
    [
        ("awq-int4", (1, 1)),
        ("fp8-ragged-blocks", (1, 1)),
        ("gptq-int4-asym-desc-act", (1, 1)),
        ("ct-int4-group-sym", (2,)),  # column blocks of packed rows, row blocks of whole groups
        ("gptq-int8-channel-v2", (2,)),  # one scale a row: any split of the inputs keeps it
        ("fp8-blocks", (2,)),
    ],
)
def test_quantized_instances_decode_like_the_dequantized_twin(quantized_factory, format_name, stage_sizes):
    checkpoint = quantized_factory(format_name)
    tokens = instance_tokens(checkpoint.path, checkpoint.config["num_hidden_layers"], stage_sizes)
    assert tokens == reference_tokens(checkpoint.model)


@pytest.mark.parametrize("stage_sizes", [(1, 1), (2,)])
def test_load_time_int4_instances_decode_like_the_reference(quantizable_factory, stage_sizes):
    source = quantizable_factory("llama-mha-tied")  # a tied head: split by vocabulary under TP
    tokens = instance_tokens(source.path, source.config["num_hidden_layers"], stage_sizes, quantize="int4")
    assert tokens == reference_tokens(load_time_twin(source, "int4"))
    engine = create_local_engine(source.path, device="cpu", dtype="float32", quantize="int4")
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    assert tokens == {
        name: [e.token_id for e in engine.generate(ids, params)] for name, ids in PROMPTS.items()
    }


def test_splitting_the_inputs_of_an_act_order_weight_is_refused(quantized_factory):
    checkpoint = quantized_factory("gptq-int4-asym-desc-act")
    config = load_model_config(checkpoint.path)
    model = build_empty_model(config, StageSpec.whole(config.num_layers))
    group = TensorParallelGroup(0, 2, ProcessGroupAllReduce(), ProcessGroupAllGather())
    rule = apply_tensor_parallel(model, group)
    with pytest.raises(UnsupportedModelError, match="activation order"):
        load_weights(
            model,
            config,
            Checkpoint(checkpoint.path),
            torch.device("cpu"),
            torch.float32,
            rule,
            config.quantization,
        )
