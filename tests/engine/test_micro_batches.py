"""Several steps in flight at once (a pipeline's micro-batches), through the whole engine: each
request gets exactly what it gets alone, steps in flight never share a sequence, and a request
aborted while its step is in flight frees its blocks and loses nothing for the others.

`InOrder` is a real executor (the whole model in this process) that answers each step only when
the engine collects it, oldest first, as a pipeline's last stage does."""

from __future__ import annotations

from collections import deque

from engine.test_paged_cache import MAX_CONTEXT, alone, run_all, varied_requests
from tandem.engine.engine import LLMEngine
from tandem.engine.executor import LocalExecutor
from tandem.model.sampling_params import SamplingParams
from tandem.model.step import StepPlan, TokenChoice
from tandem.runner.assemble import create_local_engine


class InOrder:
    """Runs each submitted step at once, hands its tokens back at `collect`; records how many
    steps were in flight together and checks that they hold different sequences."""

    def __init__(self, local: LocalExecutor, micro_batches: int) -> None:
        self.local = local
        self.micro_batches = micro_batches
        self.answers: deque[tuple[StepPlan, list[TokenChoice]]] = deque()
        self.most_in_flight = 0
        self.mixed_steps = 0  # steps with both a new prompt's chunk and a decoding sequence's row
        self.sampled: set[int] = set()  # sequences a step has chosen a token for

    def start_sequence(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.local.start_sequence(seq_id, prompt_ids, params)

    def end_sequence(self, seq_id: int) -> None:
        self.local.end_sequence(seq_id)

    def execute(self, plan: StepPlan) -> list[TokenChoice]:
        raise AssertionError("an engine with micro-batches submits and collects")

    def submit(self, plan: StepPlan) -> None:
        held = {chunk.seq_id for step, _ in self.answers for chunk in step.chunks}
        assert not held & {chunk.seq_id for chunk in plan.chunks}, "a sequence in two steps in flight"
        prompts = [chunk for chunk in plan.chunks if chunk.seq_id not in self.sampled]
        decodes = [
            chunk for chunk in plan.chunks if chunk.seq_id in self.sampled and len(chunk.token_ids) == 1
        ]
        self.mixed_steps += bool(prompts and decodes)
        self.sampled |= {chunk.seq_id for chunk in plan.chunks if chunk.sample}
        self.answers.append((plan, self.local.execute(plan)))
        self.most_in_flight = max(self.most_in_flight, len(self.answers))

    def collect(self) -> list[TokenChoice]:
        return self.answers.popleft()[1]


def engine_in_order(model_dir, micro_batches: int, num_slots: int) -> tuple[LLMEngine, InOrder]:
    local = create_local_engine(
        model_dir, device="cpu", dtype="float32", num_slots=num_slots, max_context=MAX_CONTEXT
    )
    assert isinstance(local.executor, LocalExecutor)
    executor = InOrder(local.executor, micro_batches)
    engine = LLMEngine(executor, None, local.eos_token_ids, MAX_CONTEXT, num_slots, max_prefill_tokens=64)
    return engine, executor


def test_32_requests_in_micro_batches_get_what_they_get_alone(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    requests = varied_requests(32, checkpoint.config["vocab_size"], seed=9)
    expected = alone(checkpoint.path, requests)
    for micro_batches, num_slots in ((2, 8), (3, 8), (2, 2)):  # 2 slots: blocks run out, preemption
        engine, executor = engine_in_order(checkpoint.path, micro_batches, num_slots)
        assert run_all(engine, requests) == expected, (micro_batches, num_slots)
        assert executor.most_in_flight == micro_batches
        assert executor.mixed_steps, "no group of decodes joined a prompts' step"
        stats = engine.cache_stats()
        assert stats.blocks_free == stats.blocks_total and not engine.has_work()


def test_a_request_aborted_in_flight_frees_its_blocks(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
    expected = alone(checkpoint.path, [(prompt, params) for prompt in prompts])
    engine, executor = engine_in_order(checkpoint.path, 2, 4)
    ids = [engine.add_request(prompt, params) for prompt in prompts]
    tokens: dict[int, list[int]] = {seq_id: [] for seq_id in ids}
    aborted = False
    while engine.has_work():
        for event in engine.step():
            tokens[event.seq_id].append(event.token_id)
        held = {chunk.seq_id for plan, _ in executor.answers for chunk in plan.chunks}
        if not aborted and ids[1] in held:
            engine.abort(ids[1])  # its step is in flight: its token is dropped when it comes back
            aborted = True
    assert aborted and tokens[ids[0]] == expected[0] and tokens[ids[2]] == expected[2]
    assert tokens[ids[1]] == expected[1][: len(tokens[ids[1]])] and len(tokens[ids[1]]) < 10
    stats = engine.cache_stats()
    assert stats.blocks_free == stats.blocks_total
