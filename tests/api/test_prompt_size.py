"""A prompt far too long for the context is refused at once, from its length, before it is
tokenized, while another stream on the same instance keeps its pace; the bound it is judged by
never exceeds the tokens a text really has."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time

import pytest

from tandem.model.tokenizer import Tokenizer
from tandem.store.resolve import DEMO_MODEL_DIR

HUGE_PROMPT = "To be, or not to be, that is the question. " * (5 * 2**20 // 44)  # 5 MB


@pytest.mark.parametrize(
    "text",
    [
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
        "    \n\n\t\t  " * 50,
        "ünïcödé — «quotes» 漢字 🙂 " * 20,
        "a" * 3000,
        "".join(chr(c) for c in range(32, 3000)),
    ],
)
def test_the_length_bound_never_exceeds_the_real_token_count(text):
    tokenizer = Tokenizer(DEMO_MODEL_DIR)
    assert 1 <= tokenizer.fewest_tokens(len(text)) <= len(tokenizer.encode(text))


def stream_tokens(node, instance_id: str, arrivals: list[float]) -> None:
    body = {"prompt": "ROMEO:", "params": {"max_tokens": 400, "temperature": 0, "ignore_eos": True}}
    with node.http.stream(
        "POST", f"/v1/instances/{instance_id}/generate", json=body, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.strip() and json.loads(line)["type"] == "token":
                arrivals.append(time.monotonic())


def test_an_oversized_prompt_is_refused_at_once_while_another_stream_keeps_its_pace(demo_node):
    instance_id = demo_node.instance["instance_id"]
    arrivals: list[float] = []
    streaming = threading.Thread(target=stream_tokens, args=(demo_node, instance_id, arrivals))
    streaming.start()
    deadline = time.monotonic() + 60
    while len(arrivals) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(arrivals) >= 30, "the first stream did not start"

    sent = time.monotonic()
    response = demo_node.http.post(
        f"/v1/instances/{instance_id}/generate", json={"prompt": HUGE_PROMPT, "params": {"max_tokens": 4}}
    )
    refused_after = time.monotonic() - sent
    events = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    streaming.join(timeout=120)

    assert [e["type"] for e in events] == ["rejected"], events
    assert "characters, at least" in events[0]["message"] and "the context holds 512" in events[0]["message"]
    assert refused_after < 1.0, f"refused after {refused_after:.2f} s"
    assert len(arrivals) == 400
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    during = [g for g, at in zip(gaps, arrivals[1:], strict=True) if sent <= at <= sent + refused_after + 1.0]
    assert max(during, default=0.0) < max(0.5, 20 * statistics.median(gaps)), (
        max(during),
        statistics.median(gaps),
    )
