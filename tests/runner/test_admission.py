"""A runner process's admission: it holds its slots plus `queue_limit` requests and refuses the
next with `Busy`; its `Load` reports count the requests it holds and come back to zero when they
are aborted."""

from __future__ import annotations

from runner_processes import start_instance, stop
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import Abort, Accepted, Busy, Generate, GenerateRequest, Load, Ready, Token

LONG = SamplingParams(max_tokens=100, ignore_eos=True)


def first_events(runner, count: int) -> dict[str, object]:
    """The first event of each of `count` requests (tokens of those already running skipped)."""
    firsts: dict[str, object] = {}
    while len(firsts) < count:
        event = runner.next_event()
        if not isinstance(event, Token):
            firsts.setdefault(event.request_id, event)  # type: ignore[union-attr]
    return firsts


def test_a_burst_beyond_slots_and_queue_is_refused_and_aborts_empty_the_runner(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    (runner,) = start_instance(
        checkpoint.path, checkpoint.config["num_hidden_layers"], (1,), num_slots=1, queue_limit=1
    )
    try:
        assert isinstance(runner.next_event(), Ready)
        for request_id in ("a", "b", "c"):  # one burst, before the engine has started any
            runner.send(Generate(request_id, GenerateRequest(prompt_ids=(1, 2, 3), params=LONG)))
        firsts = first_events(runner, 3)
        assert isinstance(firsts["a"], Accepted) and isinstance(firsts["b"], Accepted)
        busy = firsts["c"]
        assert isinstance(busy, Busy) and "1 slots and a queue limit of 1" in busy.message
        runner.wait_for_load(Load(requests=2, waiting=1))  # "a" runs in the one slot, "b" waits
        runner.send(Abort("a"))
        runner.send(Abort("b"))
        runner.wait_for_load(Load(requests=0, waiting=0))
        runner.send(Generate("d", GenerateRequest(prompt_ids=(4, 5), params=SamplingParams(max_tokens=3))))
        assert isinstance(runner.next_event(), Accepted)
        tokens = [runner.next_event() for _ in range(3)]
        assert all(isinstance(t, Token) for t in tokens) and tokens[-1].finish_reason == "length"  # type: ignore[union-attr]
        runner.wait_for_load(Load(requests=0, waiting=0))
    finally:
        stop([runner])


def test_aborting_a_request_that_waits_frees_it_too(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    (runner,) = start_instance(checkpoint.path, checkpoint.config["num_hidden_layers"], (1,), num_slots=1)
    try:
        assert isinstance(runner.next_event(), Ready)
        for request_id in ("a", "b"):
            runner.send(Generate(request_id, GenerateRequest(prompt_ids=(1, 2, 3), params=LONG)))
        firsts = first_events(runner, 2)
        assert all(isinstance(event, Accepted) for event in firsts.values())
        runner.wait_for_load(Load(requests=2, waiting=1))
        runner.send(Abort("b"))  # the waiting one: it never ran
        runner.wait_for_load(Load(requests=1, waiting=0))
        runner.send(Abort("a"))
        runner.wait_for_load(Load(requests=0, waiting=0))
    finally:
        stop([runner])
