"""The all-reduce of a row-parallel layer fused with the residual add and RMSNorm after it, for
decode-sized messages: one kernel instead of an all-reduce and a norm, and no barriers.

Each rank writes its partial rows straight into every rank's exchange buffer (its own region of
the current slot), then reads all ranks' regions from its own buffer, waiting element by element
until each has arrived. A buffer starts filled with the bits of -0.0, which a sender never
writes (it sends +0.0, the same value), so an element has arrived when it no longer holds those
bits — the exchange TensorRT-LLM calls Lamport. Three slots rotate per row: while using one, a
rank clears the slot of its previous call. A peer can be at most one call ahead (to finish a
call it needs this rank's rows of that call), so no one writes a slot before it is cleared.

Each row is shared by a few programs (`pieces_for`): each sends its piece of the row to every rank
and clears its piece of the old slot, waits for the whole row (the norm needs all of it), and
writes its piece of the outputs. Spreading the sending over several multiprocessors is what pays.

The slot comes from a per-row counter on the device that each call advances, so the same kernel
runs inside CUDA graphs and out of them, whatever batch sizes alternate, as long as every rank
makes the same calls in the same order — the lockstep tensor parallelism runs in already.

Every rank sums the partials in rank order in float32 and rounds to the activation dtype, so all
ranks hold the same bits; the add and the norm round where the eager code does (kernels.rms_norm).
"""

# Triton's JIT parameters (constexpr, static_range, launch options) are not typed for checkers.
# pyright: reportArgumentType=false, reportCallIssue=false, reportGeneralTypeIssues=false
# pyright: reportOperatorIssue=false

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from tandem.engine.cuda.kernels import add_rounded, overlap, store_rms_norm, wait_for_previous_kernel

SLOTS = 3
MAX_ROWS = 16  # a decode step of up to 16 sequences; larger messages take the unfused path

# integer type with the width of each activation dtype, and the bits of -0.0 in it
_BITS = {2: (torch.int16, tl.int16, -(1 << 15)), 4: (torch.int32, tl.int32, -(1 << 31))}
_TRITON_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _push_add_rms_norm_kernel(
    partial_ptr,
    residual_ptr,
    weight_ptr,
    normed_ptr,
    summed_ptr,
    buffers_ptr,  # int64 [world]: every rank's exchange buffer, as addresses valid on this GPU
    counters_ptr,  # int32 [MAX_ROWS, PIECES]: this rank's calls so far, per row and piece
    width,
    eps,
    RANK: tl.constexpr,
    WORLD: tl.constexpr,
    ROWS_PER_SLOT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    DTYPE: tl.constexpr,
    BITS: tl.constexpr,
    EMPTY: tl.constexpr,
    BLOCK: tl.constexpr,
    PIECES: tl.constexpr,
    OVERLAP: tl.constexpr,
):
    """Program (row, piece) sends and clears its piece of the row's columns and writes its piece
    of the outputs; every program of a row waits for the whole row (the norm needs all of it)."""
    wait_for_previous_kernel(OVERLAP)
    row = tl.program_id(0)
    PIECE: tl.constexpr = BLOCK // PIECES
    first = tl.program_id(1) * PIECE
    piece = first + tl.arange(0, PIECE)
    piece_inside = piece < width
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    mine = inside & (columns >= first) & (columns < first + PIECE)
    counter = counters_ptr + row * PIECES + tl.program_id(1)
    calls = tl.load(counter)
    slot = calls % 3
    previous = (calls + 2) % 3

    # send: this rank's piece of its partial row to its region of the slot, in every rank's buffer
    bits = tl.load(partial_ptr + row * width + piece, mask=piece_inside, other=0.0).to(BITS, bitcast=True)
    bits = tl.where(bits == EMPTY, 0, bits)  # -0.0 marks "not yet arrived": send +0.0
    region = ((slot * WORLD + RANK) * ROWS_PER_SLOT + row) * width
    for peer in tl.static_range(WORLD):
        peer_buffer = tl.load(buffers_ptr + peer).to(tl.pointer_type(BITS))
        tl.store(peer_buffer + region + piece, bits, mask=piece_inside)

    # receive: every rank's row from this rank's buffer, summed in rank order
    own_buffer = tl.load(buffers_ptr + RANK).to(tl.pointer_type(BITS))
    total = tl.zeros([BLOCK], tl.float32)
    for source in tl.static_range(WORLD):
        arriving = own_buffer + ((slot * WORLD + source) * ROWS_PER_SLOT + row) * width + columns
        received = tl.load(arriving, mask=inside, other=0, volatile=True)
        while tl.sum(((received == EMPTY) & inside).to(tl.int32), axis=0) > 0:
            received = tl.load(arriving, mask=inside, other=0, volatile=True)
        total += received.to(DTYPE, bitcast=True).to(tl.float32)

    # the residual add and the norm, rounded as the eager code rounds; this program's piece kept
    summed = total.to(DTYPE)
    if HAS_RESIDUAL:
        summed = add_rounded(summed, residual_ptr + row * width, columns, inside)
    tl.store(summed_ptr + row * width + columns, summed, mask=mine)
    store_rms_norm(summed, weight_ptr, normed_ptr + row * width, columns, mine, width, eps)

    # clear this piece of the previous call's slot of this row (the call after next writes it)
    empty = tl.full([PIECE], EMPTY, BITS)
    for source in tl.static_range(WORLD):
        stale = own_buffer + ((previous * WORLD + source) * ROWS_PER_SLOT + row) * width + piece
        tl.store(stale, empty, mask=piece_inside)
    tl.store(counter, calls + 1)


class PushExchange:
    """The buffers and counters of the fused all-reduce for one group; built collectively (every
    rank at the same point), for activations of `width` columns in `dtype`."""

    def __init__(
        self,
        buffers: list[torch.Tensor],
        rank: int,
        dtype: torch.dtype,
        width: int,
        pieces: int | None = None,
    ) -> None:
        """`buffers`: every rank's exchange buffer as tensors this GPU can address (of
        `exchange_elements` elements, in the integer type of `dtype`'s width), filled with
        `empty_bits(dtype)` before any rank's first call. `pieces`: programs a row, each
        sending a piece of it (default: `pieces_for`)."""
        self.rank, self.world = rank, len(buffers)
        self.dtype, self.width = dtype, width
        self.pieces = pieces or pieces_for(width)
        device = buffers[rank].device
        self.buffers = buffers  # kept alive: the kernel reads them by address
        self.addresses = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64, device=device)
        self.counters = torch.zeros(MAX_ROWS * self.pieces, dtype=torch.int32, device=device)

    @classmethod
    def over_symmetric_memory(
        cls,
        process_group: Any,
        group_name: str,
        device: torch.device,
        dtype: torch.dtype,
        width: int,
        pieces: int | None = None,
    ) -> PushExchange:
        import torch.distributed._symmetric_memory as symm_mem

        world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        count = exchange_elements(world, width)
        bits_dtype = _BITS[dtype.itemsize][0]
        local = symm_mem.empty(count, dtype=bits_dtype, device=device)
        handle = symm_mem.rendezvous(local, group_name)
        local.fill_(empty_bits(dtype))
        offset = local.data_ptr() - handle.buffer_ptrs[rank]
        peers = [
            local
            if peer == rank
            else handle.get_buffer(peer, (count,), bits_dtype, offset // local.element_size())
            for peer in range(world)
        ]
        torch.cuda.synchronize(device)
        dist.barrier(group=process_group)  # every buffer is empty before anyone sends
        return cls(peers, rank, dtype, width, pieces)

    def fits(self, partial: torch.Tensor, residual: torch.Tensor | None) -> bool:
        rows = partial.numel() // max(1, partial.shape[-1])
        return (
            partial.dtype == self.dtype
            and partial.shape[-1] == self.width
            and rows <= MAX_ROWS
            and (residual is None or residual.shape == partial.shape)
        )

    def add_rms_norm(
        self, partial: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(RMSNorm(sum + residual), sum + residual), sum being `partial` summed over the group."""
        partial = partial.contiguous()
        rows = partial.numel() // self.width
        normed = torch.empty_like(partial)
        summed = torch.empty_like(partial)
        _, bits, empty = _BITS[self.dtype.itemsize]
        block = triton.next_power_of_2(self.width)
        _push_add_rms_norm_kernel[(rows, self.pieces)](
            partial,
            residual.contiguous() if residual is not None else partial,
            weight,
            normed,
            summed,
            self.addresses,
            self.counters,
            self.width,
            eps,
            RANK=self.rank,
            WORLD=self.world,
            ROWS_PER_SLOT=MAX_ROWS,
            HAS_RESIDUAL=residual is not None,
            DTYPE=_TRITON_DTYPES[self.dtype],
            BITS=bits,
            EMPTY=empty,
            BLOCK=block,
            PIECES=self.pieces,
            num_warps=8 if block >= 4096 else 4,
            **overlap(),
        )
        return normed, summed


def pieces_for(width: int) -> int:
    """Programs a row. Four programs, each sending a quarter of the row, beat one that sends it
    all, for 2 and 4 ranks, one row or sixteen, 4096 or 8192 wide (`tools/measure_all_reduce.py`,
    4× H100: one 8B row on 4 ranks 5.7 µs against 6.7, a 70B row 8.1 against 10.3); rows too
    narrow to split keep one."""
    return 4 if width >= 1024 else 1


def exchange_elements(world: int, width: int) -> int:
    return SLOTS * world * MAX_ROWS * width


def empty_bits(dtype: torch.dtype) -> int:
    """The bits of -0.0 in `dtype`, as the signed integer of its width (the buffer's fill)."""
    return _BITS[dtype.itemsize][2]


def supported(dtype: torch.dtype) -> bool:
    return dtype in _TRITON_DTYPES
