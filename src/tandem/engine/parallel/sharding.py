"""Which part of each tensor a tensor-parallel rank holds: pure arithmetic, no torch.

Everything is split into contiguous, near-equal blocks (earlier ranks take the extra one), so
any number of ranks works, not only divisors: 3 ranks split 112 MLP columns 38/37/37.

Attention is split by query heads. A rank also holds every key/value head its query heads use,
so when ranks outnumber KV heads (or a rank's query heads straddle two KV groups) a KV head is
replicated on several ranks. The model's attention maps local query head i to local KV head
i // (local query heads / local KV heads) (grouped-query attention); `attention_shard` lists the
local KV heads so that this mapping is the true one, repeating a KV head where it must.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

from tandem.errors import InvalidRequestError
from tandem.model.stage import near_equal_parts


@dataclass(frozen=True)
class Block:
    """Indices `[start, end)` of one dimension that a rank holds."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    def scaled(self, factor: int) -> slice:
        """The slice of a dimension whose units are `factor` wide (heads of `head_dim` rows)."""
        return slice(self.start * factor, self.end * factor)


def even_blocks(total: int, parts: int) -> list[Block]:
    """`parts` contiguous blocks covering `[0, total)`, sizes differing by at most one."""
    if not 1 <= parts <= total:
        raise InvalidRequestError(f"cannot split {total} into {parts} non-empty parts")
    return [Block(start, end) for start, end in near_equal_parts(total, parts)]


def even_block(total: int, rank: int, size: int) -> Block:
    return even_blocks(total, size)[rank]


@dataclass(frozen=True)
class AttentionShard:
    """The heads of one attention layer that one rank holds.

    `query_heads` is a contiguous block of global query heads; `kv_heads` lists, in local order,
    the global KV head behind each local KV head (a head may appear more than once).
    """

    query_heads: Block
    kv_heads: tuple[int, ...]

    def kv_row_blocks(self, head_dim: int) -> tuple[slice, ...]:
        """Row slices of k_proj/v_proj to read and stack, one run of consecutive heads each."""
        runs: list[list[int]] = []
        for head in self.kv_heads:
            if runs and head == runs[-1][1]:
                runs[-1][1] += 1
            else:
                runs.append([head, head + 1])
        return tuple(slice(start * head_dim, end * head_dim) for start, end in runs)


def attention_shard(num_heads: int, num_kv_heads: int, rank: int, size: int) -> AttentionShard:
    """Rank `rank` of `size`: its query heads, and the KV heads they use (see the module doc).

    When the ranks can split the KV heads (size <= num_kv_heads), each takes whole KV groups, so
    no KV head is replicated; otherwise the query heads are split evenly and KV heads replicated.
    """
    if size > num_heads:
        raise InvalidRequestError(
            f"tensor parallelism over {size} ranks needs at least {size} attention heads; "
            f"the model has {num_heads}"
        )
    group = num_heads // num_kv_heads  # query heads per KV head
    if size <= num_kv_heads:
        kv = even_block(num_kv_heads, rank, size)
        return AttentionShard(Block(kv.start * group, kv.end * group), tuple(range(kv.start, kv.end)))
    heads = even_block(num_heads, rank, size)
    users = [head // group for head in range(heads.start, heads.end)]  # the KV head of each query head
    runs: list[tuple[int, int]] = []  # (kv head, how many local query heads use it)
    for kv_head in users:
        if runs and runs[-1][0] == kv_head:
            runs[-1] = (kv_head, runs[-1][1] + 1)
        else:
            runs.append((kv_head, 1))
    # Local group size: the largest that divides every run, so each run becomes whole local groups.
    local_group = 0
    for _, count in runs:
        local_group = gcd(local_group, count)
    kv_heads = tuple(kv_head for kv_head, count in runs for _ in range(count // local_group))
    return AttentionShard(heads, kv_heads)
