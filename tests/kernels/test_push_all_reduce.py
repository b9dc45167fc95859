"""The fused all-reduce + residual add + RMSNorm kernel (engine/cuda/push_all_reduce.py), with
the ranks of a group simulated in one process: each rank's exchange buffer is a tensor here, and
the ranks run one after another. A rank waits until every peer's row has arrived, so before a
rank runs, the test writes the rows of the ranks that have not run yet into its buffer, as those
peers would; each later rank finds the earlier ranks' rows, which their kernels sent.

Checked over calls of different batch sizes (rows rotate through the three slots at their own
pace), with and without a residual, and with partials holding -0.0 (the mark of an empty slot):
every rank's result must equal the unfused path (sum, then kernels.rms_norm) bit for bit, and
after each call only the slots of the rows' latest calls may hold data. With several programs a
row (`pieces`), the interpreter runs them one after another too, so a rank's own row is also
written before it runs (the first program would otherwise wait for the pieces of the others).
"""

from __future__ import annotations

import pytest
import torch
from interpreter import BFLOAT16  # before triton: picks the interpreter on CPUs

from conftest import TEST_DEVICE

triton = pytest.importorskip("triton")

from tandem.engine.cuda import kernels, push_all_reduce  # noqa: E402
from tandem.engine.cuda.push_all_reduce import MAX_ROWS, PushExchange, empty_bits  # noqa: E402

# float16 has bfloat16's 16-bit exchange, and the interpreter has float16
DTYPES = [BFLOAT16, torch.float16, torch.float32]
WIDTH = 48  # not a power of two: the masks matter
BATCH_SIZES = [1, 3, 1, 2, 1, 1, 16, 1]


def bits_of(values: torch.Tensor) -> torch.Tensor:
    bits_dtype = torch.int16 if values.element_size() == 2 else torch.int32
    bits = values.contiguous().view(bits_dtype).clone()
    bits[bits == empty_bits(values.dtype)] = 0  # a sender sends -0.0 as +0.0
    return bits


def region(exchange: PushExchange, buffer: torch.Tensor, slot: int, source: int, row: int) -> torch.Tensor:
    view = buffer.view(push_all_reduce.SLOTS, exchange.world, MAX_ROWS, exchange.width)
    return view[slot, source, row]


def calls_per_row(exchange: PushExchange) -> list[int]:
    counters = exchange.counters.view(MAX_ROWS, exchange.pieces)
    assert (counters == counters[:, :1]).all(), "every piece of a row has made the same calls"
    return counters[:, 0].tolist()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("world", "pieces"), [(2, 1), (3, 1), (2, 4), (3, 2)])
def test_every_rank_gets_the_unfused_result(dtype, world, pieces):
    generator = torch.Generator().manual_seed(world)
    bits_dtype = torch.int16 if dtype.itemsize == 2 else torch.int32
    count = push_all_reduce.exchange_elements(world, WIDTH)
    buffers = [
        torch.full((count,), empty_bits(dtype), dtype=bits_dtype, device=TEST_DEVICE) for _ in range(world)
    ]
    ranks = [PushExchange(buffers, rank, dtype, WIDTH, pieces) for rank in range(world)]
    weight = torch.randn(WIDTH, generator=generator).to(TEST_DEVICE, dtype)
    for call, rows in enumerate(BATCH_SIZES):
        partials = [
            torch.randn(rows, WIDTH, generator=generator).to(TEST_DEVICE, dtype) for _ in range(world)
        ]
        partials[-1][0, :7] = -0.0  # the empty mark, as data
        residual = (
            None if call % 3 == 1 else torch.randn(rows, WIDTH, generator=generator).to(TEST_DEVICE, dtype)
        )
        total = partials[0].float()
        for partial in partials[1:]:
            total = total + partial.float()
        expected_normed, expected_summed = kernels.rms_norm(total.to(dtype), weight, 1e-5, residual)
        expected_summed = expected_summed if expected_summed is not None else total.to(dtype)
        slots = [c % 3 for c in calls_per_row(ranks[0])[:rows]]
        for rank, exchange in enumerate(ranks):
            first = rank if pieces > 1 else rank + 1
            for later in range(first, world):  # rows of the ranks that have not run yet
                for row in range(rows):
                    region(exchange, buffers[rank], slots[row], later, row).copy_(
                        bits_of(partials[later][row])
                    )
            normed, summed = exchange.add_rms_norm(partials[rank], residual, weight, 1e-5)
            torch.testing.assert_close(normed, expected_normed, rtol=0, atol=0)
            torch.testing.assert_close(summed, expected_summed, rtol=0, atol=0)
        for rank, exchange in enumerate(ranks):
            for row, calls in enumerate(calls_per_row(exchange)):
                for slot in range(push_all_reduce.SLOTS):
                    empty = bool((region(exchange, buffers[rank], slot, 0, row) == empty_bits(dtype)).all())
                    assert empty == (calls == 0 or slot != (calls - 1) % 3), (rank, row, slot)
