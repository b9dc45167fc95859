"""The search behind `place`: what a stage and a hop cost, the best split of the layers over an
ordered list of devices, and that order itself. See `tandem.cluster.placement` for the model.

Pure Python. Sizes are bytes, rates bytes per second, times seconds.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING

from tandem.cluster.topology import DeviceEngine, LinkInfo, NodeId, Topology
from tandem.model.quantization import QuantFormat, loaded_format
from tandem.model.shapes import ModelShape

if TYPE_CHECKING:
    from tandem.cluster.placement import PlacementRequest

# No link is measured between a node and itself: two processes of one machine pass a hidden
# state through gloo or NCCL over shared memory / PCIe, a few tens of microseconds.
SAME_NODE_LATENCY = 20e-6
SAME_NODE_BANDWIDTH = 10e9
# A pair of nodes with no measurement in either direction: assume plain gigabit Ethernet, so an
# unmeasured route is never preferred over a measured one.
UNMEASURED_LATENCY = 1e-3
UNMEASURED_BANDWIDTH = 125e6

# Two plans whose times differ by less than this fraction count as equal (then balance decides).
_TIE = 1e-9


@dataclass(frozen=True)
class Candidate:
    """One device offered to placement, with the dtype it would run and the memory it may fill;
    or a tensor-parallel group of like devices offered as one (`placement_groups`).

    For a group, `node_id`/`torch_device` name its leader (the member that talks to the other
    stages), `usable_bytes` and `bandwidth` are the members' together (each holds and reads
    1/k), and `all_reduce_seconds` is the time of one of its collectives."""

    node_id: NodeId
    torch_device: str
    kind: str
    weight_bytes: float  # bytes per parameter
    value_bytes: float  # bytes per KV-cache element and per activation element
    usable_bytes: float  # free memory less the margin and the fixed overhead
    bandwidth: float
    members: tuple[tuple[NodeId, str], ...] = ()  # (node, torch device) of each; () : just this one
    all_reduce_seconds: float = 0.0
    engine: DeviceEngine = "torch"  # "mlx": a device its node runs on MLX (a stage of one rank)

    def __post_init__(self) -> None:
        if not self.members:
            object.__setattr__(self, "members", ((self.node_id, self.torch_device),))

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def label(self) -> str:
        if self.size == 1:
            return f"{self.node_id} {self.torch_device}"
        if len({node for node, _ in self.members}) == 1:
            return f"{self.node_id} {'+'.join(device for _, device in self.members)}"
        return " + ".join(f"{node} {device}" for node, device in self.members)


def offered_devices(topology: Topology, request: PlacementRequest) -> list[Candidate]:
    """Every device of every node, in topology order, each offered on its own (MLX devices not
    when the request quantizes as it loads, which only the PyTorch engine does)."""
    candidates = []
    for node in topology.nodes:
        for device in node.devices:
            if device.engine == "mlx" and request.quantize is not None:
                continue
            value_bytes = request.dtype_bytes(device.kind)
            if device.engine == "mlx" and device.kind == "cpu" and request.dtype is None:
                value_bytes = 4  # MLX's CPU backend computes in float32 unless asked otherwise
            usable = device.memory_free * (1 - request.memory_margin) - request.device_overhead_bytes
            candidates.append(
                Candidate(
                    node_id=node.node_id,
                    torch_device=device.torch_device,
                    kind=device.kind,
                    weight_bytes=request.weight_bytes_per_parameter or value_bytes,
                    value_bytes=value_bytes,
                    usable_bytes=usable,
                    bandwidth=device.memory_bandwidth,
                    engine=device.engine,
                )
            )
    return candidates


def weight_format(shape: ModelShape, request: PlacementRequest) -> QuantFormat | None:
    """The quantization the stages will hold: `request.quantize` at load, else the checkpoint's
    own; none where `weight_bytes_per_parameter` sets every parameter's size."""
    if request.weight_bytes_per_parameter is not None:
        return None
    fmt = loaded_format(shape.quantization, request.quantize)
    if fmt is not None and fmt.is_load_time and not shape.quantizes_ends_at_load:
        return replace(fmt, head=None, embedding=None)
    return fmt


class LinkTable:
    """Hop times between nodes, from the topology's links indexed once (100 nodes: ~10⁴ links)."""

    def __init__(self, topology: Topology) -> None:
        self._links: dict[tuple[NodeId, NodeId], LinkInfo] = {}
        for link in topology.links:
            self._links[(link.source, link.target)] = link
        for link in topology.links:  # the reverse direction stands in where only one was measured
            self._links.setdefault((link.target, link.source), link)

    def is_measured(self, source: NodeId, target: NodeId) -> bool:
        return source == target or (source, target) in self._links

    def measured(self, source: NodeId, target: NodeId) -> LinkInfo | None:
        """The measured link between two nodes (either direction), or None."""
        return self._links.get((source, target))

    def hop_seconds(self, source: NodeId, target: NodeId, payload_bytes: float) -> float:
        """Latency plus transfer time of one message from `source` to `target`."""
        if source == target:
            return SAME_NODE_LATENCY + payload_bytes / SAME_NODE_BANDWIDTH
        link = self._links.get((source, target))
        if link is None:
            return UNMEASURED_LATENCY + payload_bytes / UNMEASURED_BANDWIDTH
        return link.latency + payload_bytes / link.bandwidth


@dataclass(frozen=True)
class StageCost:
    weight_bytes: float  # held: layers, plus the embedding and head where the stage owns them
    kv_bytes: float  # held: the cache reserved for every sequence at the full context
    read_bytes: float  # read per decoded token

    @property
    def held_bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes


@dataclass(frozen=True)
class DeviceTable:
    """Sums over layers `[0, x)` for one dtype, without the model's ends (embedding and head)."""

    held: list[float]  # bytes held: weights and KV reservation
    read: list[float]  # bytes read per token
    smallest_first: list[float]  # bytes held by the x smallest layers: a bound on how many fit


@dataclass(frozen=True)
class LayerSums:
    """Per-layer counts summed over layers `[0, x)`, for one group size."""

    stored: list[int]
    read: list[int]
    quantized_stored: list[int]  # of `stored`, the weights the format holds quantized
    quantized_read: list[int]
    kv: list[int]


class LayerCosts:
    """Bytes a stage holds and reads for any layer range on any device, from prefix sums.

    Weights a quantized format holds (`ModelShape.quantized_layer_parameters`) take that
    format's bytes (packed values, scales, zero points); every other parameter takes the
    device's dtype. The embedding and head take their own scheme's bytes where quantized.
    A tensor-parallel group counts its stage as `ModelShape.for_group` does: its size times what
    its largest member holds and reads, which compares with its pooled memory and bandwidth."""

    def __init__(self, shape: ModelShape, request: PlacementRequest) -> None:
        self.shape, self.request = shape, request
        self.num_layers = shape.num_layers
        self.format = weight_format(shape, request)
        self._sums: dict[int, LayerSums] = {}
        self._kv_held_tokens = request.context_length * request.num_sequences
        # A token reads the cache of its own sequence only; count it at the full context.
        self._kv_read_tokens = request.context_length
        self._tables: dict[tuple[int, float, float], DeviceTable] = {}
        fmt, hidden = self.format, shape.hidden_size
        self._quantized_bytes = fmt.layers.bytes_per_parameter(hidden) if fmt else 0.0
        self._embedding_bytes = fmt.embedding.bytes_per_parameter(hidden) if fmt and fmt.embedding else None
        self._head_bytes = fmt.head.bytes_per_parameter(hidden) if fmt and fmt.head else None

    def shape_for(self, device: Candidate) -> ModelShape:
        """The shape as `device` (one device, or a group) holds it."""
        return self.shape.for_group(device.size)

    def sums(self, device: Candidate) -> LayerSums:
        """The prefix sums for the device's group size, built once for each."""
        if device.size not in self._sums:
            shape = self.shape_for(device)
            quantized = shape.quantized_layer_parameters(self.format)
            self._sums[device.size] = LayerSums(
                stored=[0, *accumulate(shape.layer_parameters)],
                read=[0, *accumulate(shape.layer_parameters_read)],
                quantized_stored=[0, *accumulate(stored for stored, _ in quantized)],
                quantized_read=[0, *accumulate(read for _, read in quantized)],
                kv=[0, *accumulate(shape.layer_kv_elements)],
            )
        return self._sums[device.size]

    def _weights(self, weight_bytes: float, stored: float, quantized: float) -> float:
        return (stored - quantized) * weight_bytes + quantized * self._quantized_bytes

    def end_bytes(self, device: Candidate, start: int, end: int) -> tuple[float, float]:
        """(held, read) bytes the embedding and head add to stage `[start, end)` on `device`."""
        shape, held, read = self.shape, 0.0, 0.0
        embedding_bytes = self._embedding_bytes or device.weight_bytes
        head_bytes = self._head_bytes or device.weight_bytes
        if start == 0:
            held += shape.embedding_parameters * embedding_bytes
            read += shape.hidden_size * embedding_bytes  # a lookup reads one row
        if end == self.num_layers:
            norm = (shape.head_parameters - shape.head_linear_parameters) * device.weight_bytes
            shares = start == 0 and shape.tie_word_embeddings and embedding_bytes == head_bytes
            held += norm + (0 if shares else shape.head_linear_parameters * head_bytes)
            read += norm + shape.head_linear_parameters * head_bytes
        return held, read

    def layer_weight_bytes(self, device: Candidate, layer: int) -> float:
        """Bytes of one layer's weights on `device` (without the embedding or head)."""
        sums = self.sums(device)
        stored = sums.stored[layer + 1] - sums.stored[layer]
        quantized = sums.quantized_stored[layer + 1] - sums.quantized_stored[layer]
        return self._weights(device.weight_bytes, stored, quantized)

    def stage(self, device: Candidate, start: int, end: int) -> StageCost:
        """Layers `[start, end)` on `device`; the first stage owns the embedding, the last the head."""
        sums = self.sums(device)
        end_held, end_read = self.end_bytes(device, start, end)
        stored = self._weights(
            device.weight_bytes,
            sums.stored[end] - sums.stored[start],
            sums.quantized_stored[end] - sums.quantized_stored[start],
        )
        read = self._weights(
            device.weight_bytes,
            sums.read[end] - sums.read[start],
            sums.quantized_read[end] - sums.quantized_read[start],
        )
        kv_elements = sums.kv[end] - sums.kv[start]
        return StageCost(
            weight_bytes=stored + end_held,
            kv_bytes=kv_elements * self._kv_held_tokens * device.value_bytes,
            read_bytes=read + end_read + kv_elements * self._kv_read_tokens * device.value_bytes,
        )

    def table(self, device: Candidate) -> DeviceTable:
        """The per-layer sums for `device`'s group size and dtypes, built once for each."""
        key = (device.size, device.weight_bytes, device.value_bytes)
        if key not in self._tables:
            _, weight, value = key
            sums = self.sums(device)
            held_per_token, read_per_token = self._kv_held_tokens * value, self._kv_read_tokens * value
            held = [
                self._weights(weight, w, q) + k * held_per_token
                for w, q, k in zip(sums.stored, sums.quantized_stored, sums.kv, strict=True)
            ]
            read = [
                self._weights(weight, r, q) + k * read_per_token
                for r, q, k in zip(sums.read, sums.quantized_read, sums.kv, strict=True)
            ]
            layers = sorted(after - before for before, after in pairwise(held))
            self._tables[key] = DeviceTable(held, read, [0.0, *accumulate(layers)])
        return self._tables[key]

    def max_layers(self, device: Candidate) -> int:
        """At most this many layers fit on `device` (the smallest ones, without embedding or head)."""
        return bisect_right(self.table(device).smallest_first, device.usable_bytes) - 1

    def collectives(self, device: Candidate, start: int, end: int) -> int:
        """Collectives a token costs a tensor-parallel group running `[start, end)`: two
        all-reduces a layer, one for the embedding, the head's all-gather, and the leader's
        broadcast of the step to its group. None for a single device."""
        if device.size == 1:
            return 0
        return 2 * (end - start) + (start == 0) + (end == self.num_layers) + 1

    def seconds(self, device: Candidate, start: int, end: int) -> float:
        """Predicted time of one token on `device` for `[start, end)`: reading, then collectives."""
        reading = self.stage(device, start, end).read_bytes / device.bandwidth
        return reading + self.collectives(device, start, end) * device.all_reduce_seconds

    def fits(self, device: Candidate, start: int, end: int) -> bool:
        return self.stage(device, start, end).held_bytes <= device.usable_bytes

    def model_fraction(self, device: Candidate) -> float:
        """How much of the whole model (weights and cache) the device could hold, ignoring layer edges."""
        return max(device.usable_bytes, 0.0) / self.stage(device, 0, self.num_layers).held_bytes


def split_layers(costs: LayerCosts, order: list[Candidate]) -> list[int] | None:
    """Stage boundaries `[0, b1, …, num_layers]` giving each device of `order`, in that order, at
    least one layer, within its memory, minimizing the summed compute time (ties: the smallest
    slowest stage, so equal devices get equal shares); None when no split fits.

    Dynamic programming over (device, boundary). A stage grows by lowering its start, and its
    memory only grows with it, so each inner loop stops at the first start that does not fit.
    Each device's end is also bounded by how many layers it and the others can hold at most, so
    a tight cluster explores a narrow band: about devices × spare layers × layers per device.
    Devices with room to spare (a forced split, `min_stages`) cost up to devices × layers²:
    30 devices × 126 layers take about 0.3 s.
    """
    n, num_layers = len(order), costs.num_layers
    capacities = [costs.max_layers(device) for device in order]
    if not 1 <= n <= num_layers or min(capacities) < 1 or sum(capacities) < num_layers:
        return None
    most_by = list(accumulate(capacities))  # layers devices 0..i can hold at most
    reached: dict[int, tuple[float, float]] = {0: (0.0, 0.0)}  # boundary -> (time sum, slowest stage)
    parents: list[dict[int, int]] = []
    for index, device in enumerate(order):
        table = costs.table(device)
        row: dict[int, tuple[float, float]] = {}
        parent: dict[int, int] = {}
        rest_hold_at_most = most_by[-1] - most_by[index]
        lowest_end = num_layers if index == n - 1 else max(index + 1, num_layers - rest_hold_at_most)
        highest_end = min(num_layers - (n - 1 - index), most_by[index])
        for end in range(lowest_end, highest_end + 1):
            best: tuple[float, float] | None = None
            for start in (0,) if index == 0 else range(end - 1, index - 1, -1):
                held = table.held[end] - table.held[start]
                read = table.read[end] - table.read[start]
                if start == 0 or end == num_layers:
                    end_held, end_read = costs.end_bytes(device, start, end)
                    held, read = held + end_held, read + end_read
                if held > device.usable_bytes:
                    break
                if start not in reached:
                    continue
                before_sum, before_max = reached[start]
                seconds = read / device.bandwidth
                if device.size > 1:
                    seconds += costs.collectives(device, start, end) * device.all_reduce_seconds
                option = (before_sum + seconds, max(before_max, seconds))
                if best is None or _better(option, best):
                    best, parent[end] = option, start
            if best is not None:
                row[end] = best
        if not row:
            return None
        reached = row
        parents.append(parent)
    if num_layers not in reached:
        return None
    boundaries = [num_layers]
    for parent in reversed(parents):
        boundaries.append(parent[boundaries[-1]])
    return boundaries[::-1]


def _better(option: tuple[float, float], best: tuple[float, float]) -> bool:
    tolerance = _TIE * max(abs(best[0]), 1e-30)
    if option[0] < best[0] - tolerance:
        return True
    return option[0] <= best[0] + tolerance and option[1] < best[1]


def pipeline_order(selected: list[Candidate], links: LinkTable, payload_bytes: float) -> list[Candidate]:
    """A cheap ring through the selected devices: the devices of one node side by side, the nodes
    in nearest-neighbour order by hop time, starting at the node of the first (fastest) device.

    O(nodes²) hop look-ups: 100 nodes take about a millisecond.
    """
    by_node: dict[NodeId, list[Candidate]] = {}
    for device in selected:
        by_node.setdefault(device.node_id, []).append(device)
    remaining = list(by_node)  # first-seen order breaks ties, which keeps faster nodes earlier
    tour = [remaining.pop(0)]
    while remaining:
        here = tour[-1]
        nearest = min(remaining, key=lambda node: links.hop_seconds(here, node, payload_bytes))
        remaining.remove(nearest)
        tour.append(nearest)
    return [device for node in tour for device in by_node[node]]


def rotations(order: list[Candidate]) -> Iterator[list[Candidate]]:
    """The ring started at each node in turn: the ring's hops stay the same, but which devices
    carry the embedding (first) and the head (last) changes, and with it what fits."""
    for index, device in enumerate(order):
        if index > 0 and device.node_id != order[index - 1].node_id:
            yield order[index:] + order[:index]


def ring_hop_seconds(order: list[Candidate], links: LinkTable, hidden_size: int) -> list[float]:
    """The hop after each stage: to the next stage, and from the last back to the first (the
    sampled token returns; it is costed like a hidden state). A single stage has no hops."""
    if len(order) == 1:
        return [0.0]
    hops = []
    for index, device in enumerate(order):
        following = order[(index + 1) % len(order)]
        hops.append(links.hop_seconds(device.node_id, following.node_id, hidden_size * device.value_bytes))
    return hops
