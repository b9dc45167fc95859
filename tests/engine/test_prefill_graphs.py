"""Short prompts replayed from CUDA graphs give the tokens the eager forward gives, prompts padded
to their bucket, for grouped, full and normed-key attention. The graphs need a GPU
(`TANDEM_TEST_DEVICE=cuda`); the bucket choice is pure."""

from __future__ import annotations

import pytest
import torch

from conftest import TEST_DEVICE, TEST_DTYPE
from tandem import settings
from tandem.engine.cuda.prefill_graphs import PREFILL_BUCKETS, prefill_bucket
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine

PROMPT_LENGTHS = (2, 5, 16, 17, 100, 200, 247)  # the test checkpoints hold 256 positions


@pytest.mark.parametrize(
    ("tokens", "bucket"), [(2, 16), (16, 16), (17, 32), (128, 128), (129, 256), (512, 512), (513, None)]
)
def test_a_prompt_takes_the_smallest_bucket_that_holds_it(tokens, bucket):
    assert prefill_bucket(tokens, PREFILL_BUCKETS) == bucket


def generate_all(checkpoint, prefill_graphs: bool) -> tuple[list[list[int]], object]:
    settings.use_engine_options(settings.EngineOptions(prefill_graphs=prefill_graphs))
    try:
        engine = create_local_engine(
            checkpoint.path, device=TEST_DEVICE, dtype=TEST_DTYPE, num_slots=2, max_context=256
        )
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        generator = torch.Generator().manual_seed(5)
        prompts = [torch.randint(1, 200, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
        outputs = [[event.token_id for event in engine.generate(prompt, params)] for prompt in prompts]
        return outputs, engine.executor.runner.prefill_graphs  # type: ignore[attr-defined]
    finally:
        settings.use_engine_options(settings.EngineOptions.from_environment())


@pytest.mark.skipif(not TEST_DEVICE.startswith("cuda"), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha-tied", "qwen3-qknorm"])
def test_prompts_from_graphs_decode_like_the_eager_forward(checkpoint_factory, family):
    checkpoint = checkpoint_factory(family)
    eager, none = generate_all(checkpoint, prefill_graphs=False)
    graphed, graphs = generate_all(checkpoint, prefill_graphs=True)
    assert none is None and graphs is not None
    assert sorted(graphs.graphs) == [16, 32, 128, 256]  # a 256-token context: no larger bucket
    assert graphed == eager
