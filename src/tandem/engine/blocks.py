"""The paged KV cache's bookkeeping: fixed-size blocks from one pool, refcounted, and found again
by the chained hash of the tokens they hold (prefix reuse). Pure Python.

The scheduler owns the one `BlockPool` of an instance and writes each sequence's block table into
the step plan; every stage keeps its keys and values for its own layers in blocks of the same
numbering (`kv_cache.KVCache`), so one decision serves the whole pipeline.

A full block's hash chains its tokens to its predecessor's hash, so equal hashes mean equal
prefixes. A block whose sequence ended goes back to the free list but keeps its hash and content
until it is handed out again (least recently freed first): a later prompt with the same prefix
takes it back instead of recomputing it. Only full blocks are shared, and a shared block is never
written again (its tokens are all computed), so no copy-on-write is needed.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

BLOCK_SIZE = 16  # tokens a block holds


def blocks_for(num_tokens: int, block_size: int = BLOCK_SIZE) -> int:
    """Blocks that hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


def pool_blocks(num_slots: int, max_context: int, block_size: int = BLOCK_SIZE) -> int:
    """The pool of an instance sized as `num_slots` sequences of the full context: the memory
    that placement counts. Short sequences take fewer blocks, so many more of them run at once."""
    return num_slots * blocks_for(max_context, block_size)


def prefix_hashes(token_ids: list[int], block_size: int = BLOCK_SIZE) -> list[bytes]:
    """The chained hash of each full block of `token_ids` (a block's hash covers every token
    before its end). A cryptographic digest: a collision would silently serve another prompt."""
    hashes: list[bytes] = []
    for end in range(block_size, len(token_ids) + 1, block_size):
        hashes.append(block_hash(hashes[-1] if hashes else b"", token_ids[end - block_size : end]))
    return hashes


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """The hash of a block holding `tokens` after the prefix hashed `parent` (b"" at the start)."""
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class CacheStats:
    """The pool's state and the prefix cache's counters (blocks looked up and found or not)."""

    block_size: int
    blocks_total: int
    blocks_free: int
    prefix_hits: int
    prefix_misses: int


class BlockPool:
    """Blocks 0 … `num_blocks` - 1, each free or held by one or more sequences."""

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.references = [0] * num_blocks
        # Free blocks in the order they are handed out: never-used first, then least recently freed.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.by_hash: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}
        self.prefix_hits = 0
        self.prefix_misses = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    def stats(self) -> CacheStats:
        return CacheStats(
            self.block_size, self.num_blocks, self.num_free, self.prefix_hits, self.prefix_misses
        )

    def allocate(self) -> int:
        """A free block for new tokens (forgetting what it cached). Raises when none is free."""
        if not self.free:
            raise RuntimeError("no free KV-cache block")
        block, _ = self.free.popitem(last=False)
        cached = self.hash_of.pop(block, None)
        if cached is not None:
            del self.by_hash[cached]
        self.references[block] = 1
        return block

    def cached_prefix(self, hashes: list[bytes]) -> list[int]:
        """The blocks that hold the longest cached prefix of `hashes` (not yet taken)."""
        blocks = []
        for value in hashes:
            block = self.by_hash.get(value)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def free_needed(self, hashes: list[bytes], total_blocks: int) -> int:
        """Free blocks a sequence of `total_blocks` takes when its cached prefix is reused:
        new blocks for the rest, and the cached ones that sit in the free list."""
        cached = self.cached_prefix(hashes)
        return total_blocks - len(cached) + sum(1 for block in cached if self.references[block] == 0)

    def take_prefix(self, hashes: list[bytes], looked_up: int) -> list[int]:
        """Take the cached prefix of `hashes` for a new sequence and count `looked_up` blocks
        as looked up (those past the prefix are misses)."""
        blocks = self.cached_prefix(hashes)
        for block in blocks:
            if self.references[block] == 0:
                del self.free[block]
            self.references[block] += 1
        self.prefix_hits += len(blocks)
        self.prefix_misses += max(looked_up - len(blocks), 0)
        return blocks

    def register(self, block: int, value: bytes) -> None:
        """Record that `block` is full and holds the prefix hashed `value`. A prefix already
        cached in another block keeps that one; this block then stays unnamed."""
        if value in self.by_hash or block in self.hash_of:
            return
        self.by_hash[value] = block
        self.hash_of[block] = value

    def release(self, blocks: list[int]) -> None:
        """A sequence lets go of `blocks`; those no other sequence holds become free (the last
        block first, so a chain's tail is forgotten before its head)."""
        for block in reversed(blocks):
            self.references[block] -= 1
            if self.references[block] == 0:
                self.free[block] = None
