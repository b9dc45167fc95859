"""Which part of a model one process holds: a half-open layer range plus the ends it owns.

Pure Python: placement produces these and the loader consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class LayerRange:
    """Decoder layers `[start, end)`."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a layer range needs 0 <= start < end, got [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        return iter(range(self.start, self.end))

    def __contains__(self, layer_index: object) -> bool:
        return isinstance(layer_index, int) and self.start <= layer_index < self.end

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True)
class StageSpec:
    """One pipeline stage of a model with `num_layers` layers.

    The first stage owns the token embedding; the last owns the final norm and the output head.
    A single stage that covers every layer is both.
    """

    layers: LayerRange
    num_layers: int

    def __post_init__(self) -> None:
        if self.layers.end > self.num_layers:
            raise ValueError(f"layer range {self.layers} goes past the model's {self.num_layers} layers")

    @classmethod
    def whole(cls, num_layers: int) -> StageSpec:
        return cls(LayerRange(0, num_layers), num_layers)

    @property
    def is_first(self) -> bool:
        return self.layers.start == 0

    @property
    def is_last(self) -> bool:
        return self.layers.end == self.num_layers


def near_equal_parts(total: int, parts: int) -> list[tuple[int, int]]:
    """(start, end) of `parts` contiguous ranges covering `[0, total)`, sizes differing by at
    most one, earlier ones larger (layers over stages, heads or columns over ranks)."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for index in range(parts):
        end = start + base + (1 if index < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def split_evenly(num_layers: int, num_stages: int) -> list[LayerRange]:
    """Contiguous ranges of near-equal size covering `[0, num_layers)`, earlier stages larger."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {num_stages} stages")
    return [LayerRange(start, end) for start, end in near_equal_parts(num_layers, num_stages)]
