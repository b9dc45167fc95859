"""The runner wire between two real processes over gloo: headers that fit the envelope and
headers that do not, with and without a tensor, point to point and broadcast; all on one group,
or headers on a group of their own (as between GPU pipeline stages: headers over gloo, tensors
over NCCL)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tandem.model.step import SequenceChunk, StepPlan
from tandem.protocol import codec
from tandem.protocol.stages import Step
from tandem.runner.wire import INLINE_HEADER_BYTES

PEER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from tandem.protocol import codec
    from tandem.protocol.stages import StageMessage
    from tandem.runner.wire import Wire
    rendezvous, rank, cases = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    wire = Wire(cpu, dist.new_group(backend="gloo"), cpu) if sys.argv[4] == "split" else Wire(cpu)
    received = []
    for case in cases:
        tensor = torch.arange(case["numel"], dtype=torch.float32).view(-1, 2) if case["numel"] else None
        if rank == 0:
            header = codec.from_json(StageMessage, case["header"])
            wire.send(header, tensor, dst=1)
            wire.broadcast(header, tensor, src=0)
        else:
            for header, got in (wire.recv(src=0), wire.receive_broadcast(src=0)):
                same = (got is None and tensor is None) or (got is not None and torch.equal(got, tensor))
                received.append({"header": codec.to_json(header), "tensor_equal": same})
    if rank == 1:
        print(json.dumps(received))
    dist.destroy_process_group()
    """
)


def header_of(size: int) -> dict:
    """A step header whose encoding is exactly `size` bytes: one chunk of token ids 1 (two bytes
    each with the comma), the first widened to 11 when the parity is off."""

    def step(token_ids: list[int]) -> Step:
        return Step(StepPlan((SequenceChunk(0, (0, 1, 2, 3), 0, tuple(token_ids), True),)))

    count = (size - len(codec.encode(step([1]))) + 2) // 2
    token_ids = [1] * count
    if len(codec.encode(step(token_ids))) != size:
        token_ids[0] = 11
    header = step(token_ids)
    assert len(codec.encode(header)) == size
    return codec.to_json(header)


@pytest.mark.parametrize("groups", ["one", "split"])
def test_headers_around_the_envelope_size_and_tensors_arrive_whole(tmp_path, groups):
    sizes = [200, INLINE_HEADER_BYTES, INLINE_HEADER_BYTES + 1, 20_000]
    cases = [{"header": header_of(size), "numel": numel} for size in sizes for numel in (0, 6)]
    assert [len(codec.encode(codec.from_json(Step, case["header"]))) for case in cases[::2]] == sizes
    rendezvous = str(tmp_path / "rendezvous")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PEER, rendezvous, str(rank), json.dumps(cases), groups],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    received = json.loads(outputs[1])
    expected = [{"header": case["header"], "tensor_equal": True} for case in cases for _ in range(2)]
    assert received == expected
