"""Small facts the ranks of a group agree on (where each runs, what each can use), exchanged as
JSON bytes in tensors: `torch.distributed.all_gather_object` would unpickle what peers send."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist


def all_gather_json(value: Any, group: Any) -> list[Any]:
    """Every rank's `value` (JSON data: lists, numbers, strings, booleans, None), in rank order.
    Collective over `group`, which must run on the CPU (gloo)."""
    payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
    size = dist.get_world_size(group)
    lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(lengths, torch.tensor([payload.numel()], dtype=torch.int64), group=group)
    longest = max(int(length) for length in lengths)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: payload.numel()] = payload
    blocks = [torch.empty(longest, dtype=torch.uint8) for _ in range(size)]
    dist.all_gather(blocks, padded, group=group)
    return [
        json.loads(bytes(block[: int(length)].tolist()).decode())
        for block, length in zip(blocks, lengths, strict=True)
    ]
