"""Where a model goes: `place(shape, topology, request) -> Placement | Infeasible`. Pure Python.

Cost model (batch-1 decode, which is bound by memory bandwidth):

    seconds per token = Σ over stages  bytes the stage reads per token / (k × its devices' memory_bandwidth)
                                       + the stage's collectives × one collective's time  (k > 1)
                      + Σ over hops    link latency + hidden_size × dtype bytes / link bandwidth

- A stage is one device (k = 1) or a tensor-parallel group of k like GPUs (`placement_groups`):
  each member holds and reads 1/k of the stage, and a token costs the group two all-reduces per
  layer, one for the embedding, the head's all-gather and the leader's broadcast of the step.

- A stage reads, per token, every parameter of its layers that the token uses (a mixture-of-experts
  layer: attention, router, shared experts, top-k routed experts), the KV cache of one sequence at
  the full requested context, one row of the embedding (a lookup) on the first stage, and the
  whole head (final norm + output projection) on the last.
- Hops run from each stage to the next and from the last back to the first, so a pipeline is a
  ring. Same-node hops use a small constant (no link is measured from a node to itself); an
  unmeasured pair of nodes is assumed to be gigabit Ethernet (`placement_search` has the numbers).
- A device may fill `memory_free × (1 − memory_margin) − device_overhead_bytes` with its weights
  (the first stage also holds the embedding, the last the head: a full copy unless the same stage
  holds a tied embedding) plus its KV reservation: context_length × num_sequences tokens for each
  of its layers. The fixed overhead stands for activations, logits and the framework's workspace.
- Weights and cache take `cuda_dtype_bytes` per value on CUDA and `cpu_dtype_bytes` on CPUs (by
  default the checkpoint's own: 2 for a 16-bit or quantized checkpoint, which the CPU engine keeps
  in 16 bits, 4 for float32). Quantized weights (the checkpoint's `quantization_config`, or
  `quantize` at load) count their real bytes: packed values plus scales and zero points for the
  projections the format quantizes, the dtype's bytes for everything else
  (`placement_search.LayerCosts`). `weight_bytes_per_parameter` instead sets every weight's size.

Rules: a model that fits on one device stays on the fastest device that holds it whole, unless a
split over faster devices is predicted at least `SPLIT_GAIN_REQUIRED` (1.25×) faster (a 70B model
on two GPUs rather than one big CPU box). Otherwise devices join fastest first (the least time to
read the whole model), until together they hold every layer; they are ordered as a ring with
cheap hops, and the layers are split among them by dynamic programming to minimize the summed
time, so faster devices fill to what their memory allows and slower ones take the rest.
These rules run once over the devices on their own and once over each pool where like GPUs are
grouped (within a host, and across hosts joined by measured links); the fastest plan wins unless
one on fewer devices is within `MORE_DEVICES_GAIN_REQUIRED` (1.1×) of it, and the plan's first
note compares them in tokens per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, NamedTuple

from tandem.cluster.placement_groups import candidate_pools, choose, forced_group
from tandem.cluster.placement_search import (
    UNMEASURED_BANDWIDTH,
    UNMEASURED_LATENCY,
    Candidate,
    LayerCosts,
    LinkTable,
    offered_devices,
    pipeline_order,
    ring_hop_seconds,
    rotations,
    split_layers,
)
from tandem.cluster.placement_why import oversized_layer, why_infeasible
from tandem.cluster.shared_hosts import split_shared_memory
from tandem.cluster.topology import DeviceEngine, DeviceKind, NodeId, Topology
from tandem.errors import InvalidRequestError
from tandem.model.config import DTYPE_BYTES
from tandem.model.quantization import QUANTIZE_CHOICES
from tandem.model.shapes import ModelShape
from tandem.model.stage import LayerRange, StageSpec

DEFAULT_DEVICE_OVERHEAD_BYTES = 1_000_000_000
# A split must be predicted this much faster to take a model off a device that holds it whole:
# the cost model leaves out what splitting adds (per-stage overheads, more machines to fail).
SPLIT_GAIN_REQUIRED = 1.25
_ROTATIONS_TRIED = 8


class DeviceAddress(NamedTuple):
    """A device of the cluster: the node it belongs to and its torch name ("cuda:0", "cpu")."""

    node_id: NodeId
    torch_device: str

    def __str__(self) -> str:
        return f"{self.node_id} {self.torch_device}"


@dataclass(frozen=True)
class PlacementRequest:
    """What the placement must provide for; sizes in bytes."""

    context_length: int  # tokens per sequence
    num_sequences: int = 8  # KV-cache slots
    cuda_dtype_bytes: float = 2  # bfloat16
    cpu_dtype_bytes: float | None = None  # None: the checkpoint's (2 for 16-bit or quantized, else 4)
    weight_bytes_per_parameter: float | None = None  # every weight's size; None: the dtype's / format's
    quantize: str | None = None  # "int8" / "int4": quantized at load (tandem.model.quantization)
    dtype: str | None = None  # the runners' dtype on every device (float32, bfloat16, float16); None: auto
    memory_margin: float = 0.1  # fraction of each device's free memory left free
    device_overhead_bytes: int = DEFAULT_DEVICE_OVERHEAD_BYTES  # activations and workspace, per device
    # A forced split, one entry per stage in pipeline order: a device, or several devices that
    # form the stage's tensor-parallel group. Given as (node, device) pairs or tuples of them.
    devices: tuple[tuple[DeviceAddress, ...], ...] | None = None
    min_stages: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.context_length >= 1, f"context_length must be at least 1, got {self.context_length}"),
            (self.num_sequences >= 1, f"num_sequences must be at least 1, got {self.num_sequences}"),
            (
                self.cuda_dtype_bytes > 0 and (self.cpu_dtype_bytes is None or self.cpu_dtype_bytes > 0),
                "dtype sizes must be positive",
            ),
            (
                self.quantize is None or self.quantize in QUANTIZE_CHOICES,
                f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {self.quantize!r}",
            ),
            (
                self.dtype is None or self.dtype in DTYPE_BYTES,
                f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}",
            ),
            (
                self.weight_bytes_per_parameter is None or self.weight_bytes_per_parameter > 0,
                "weight_bytes_per_parameter must be positive",
            ),
            (0 <= self.memory_margin < 1, f"memory_margin must be in [0, 1), got {self.memory_margin}"),
            (self.device_overhead_bytes >= 0, "device_overhead_bytes must not be negative"),
            (self.min_stages >= 1, f"min_stages must be at least 1, got {self.min_stages}"),
            (self.devices is None or len(self.devices) > 0, "devices, when given, must name at least one"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(f"invalid placement request: {message}")
        if self.devices is not None:
            stages = tuple(_stage_addresses(entry) for entry in self.devices)
            addresses = [address for stage in stages for address in stage]
            if len(set(addresses)) != len(addresses):
                raise InvalidRequestError("invalid placement request: a device is named twice in devices")
            object.__setattr__(self, "devices", stages)

    def dtype_bytes(self, kind: DeviceKind | str) -> float:
        """Bytes per value (weights, cache, activations) on a device of this kind (`for_shape`
        has settled the CPU's)."""
        if kind in ("cuda", "metal"):  # 16-bit unless asked otherwise
            return self.cuda_dtype_bytes
        return 4 if self.cpu_dtype_bytes is None else self.cpu_dtype_bytes

    def for_shape(self, shape: ModelShape) -> PlacementRequest:
        """This request with the CPU's dtype settled for `shape`: the engine keeps a 16-bit
        checkpoint, and activations beside quantized weights, in 16 bits on CPUs; a `dtype`
        named for the runners takes its size everywhere."""
        if self.dtype is not None:
            size = DTYPE_BYTES[self.dtype]
            return replace(self, cuda_dtype_bytes=size, cpu_dtype_bytes=size)
        if self.cpu_dtype_bytes is not None:
            return self
        sixteen = shape.checkpoint_dtype in ("bfloat16", "float16")
        quantized = self.quantize is not None or shape.quantization is not None
        return replace(self, cpu_dtype_bytes=2 if sixteen or quantized else 4)


def _stage_addresses(entry: Any) -> tuple[DeviceAddress, ...]:
    """One forced stage: a (node, device) pair, or a tuple of them (a tensor-parallel group)."""
    if isinstance(entry[0], str):
        return (DeviceAddress(*entry),)
    if not entry:
        raise InvalidRequestError("invalid placement request: a stage in devices names no device")
    return tuple(DeviceAddress(*device) for device in entry)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a tensor-parallel group of `members` (one device, or several like
    GPUs) running `layers`. Byte counts are the whole stage's; a group of k members holds 1/k each."""

    members: tuple[DeviceAddress, ...]
    layers: LayerRange
    weight_bytes: int
    kv_bytes: int
    compute_seconds: float  # reading this stage's bytes for one token (each member reads 1/k)
    send_seconds: float  # the hop to the next stage (from the last: back to the first)
    all_reduce_seconds: float = 0.0  # the tensor-parallel group's collectives for one token
    engine: DeviceEngine = "torch"  # what computes it: "mlx" on a Metal GPU or a CPU given to MLX

    @property
    def predicted_seconds(self) -> float:
        return self.compute_seconds + self.all_reduce_seconds + self.send_seconds

    @property
    def backend(self) -> str:
        """The backend of the stage's own group: NCCL when every member is a CUDA device."""
        return "nccl" if all(member.torch_device.startswith("cuda") for member in self.members) else "gloo"


@dataclass(frozen=True)
class Placement:
    """A model split into pipeline stages over the cluster's devices, with its predicted speed."""

    model_name: str
    num_layers: int
    stages: tuple[Stage, ...]
    request: PlacementRequest
    notes: tuple[str, ...] = field(default=())  # why this plan, and what it assumed
    weight_format: str = ""  # the quantized weights' format, for people ("" : the dtype's)

    @property
    def predicted_seconds_per_token(self) -> float:
        return sum(stage.predicted_seconds for stage in self.stages)

    @property
    def predicted_tokens_per_second(self) -> float:
        return 1.0 / self.predicted_seconds_per_token

    @property
    def backend(self) -> str:
        """The torch.distributed backend: NCCL when every member is a CUDA device, else gloo."""
        cuda_only = all(
            member.torch_device.startswith("cuda") for stage in self.stages for member in stage.members
        )
        return "nccl" if cuda_only else "gloo"

    def stage_specs(self) -> list[StageSpec]:
        """What each stage's loader needs: its layers and whether it holds the embedding and head."""
        return [StageSpec(stage.layers, self.num_layers) for stage in self.stages]

    def explain(self) -> list[str]:
        """Human-readable lines: one per stage, then the prediction and the notes."""
        request = self.request
        noun = "stage" if len(self.stages) == 1 else "stages"
        lines = [
            f"{self.model_name}: {len(self.stages)} {noun} over {self.backend}, "
            f"{request.context_length} tokens × {request.num_sequences} sequences"
        ]
        if self.weight_format:
            lines.append(f"weights: {self.weight_format}")
        width = max(len(member.node_id) for stage in self.stages for member in stage.members)
        members = [_members_text(stage.members, width, stage.engine) for stage in self.stages]
        column = max(len(text) for text in members)
        for index, stage in enumerate(self.stages):
            lines.append(
                f"  stage {index}  {members[index]:<{column}}  layers {stage.layers!s:<10}  "
                f"{stage.weight_bytes / 1e9:7.1f} GB weights  {stage.kv_bytes / 1e9:6.1f} GB KV  "
                f"{stage.predicted_seconds * 1e3:8.2f} ms"
            )
        lines.append(
            f"predicted {self.predicted_seconds_per_token * 1e3:.2f} ms per token, "
            f"{self.predicted_tokens_per_second:.1f} tokens/s (one sequence decoding)"
        )
        lines.extend(f"note: {note}" for note in self.notes)
        return lines


def _members_text(members: tuple[DeviceAddress, ...], width: int, engine: str) -> str:
    """A stage's devices: `node  cuda:0`, `node  cuda:0+cuda:1` (a group within a node), or
    `a cuda:0 + b cuda:0` (a group across nodes); `node  cpu (mlx)` where MLX computes it."""
    if engine == "mlx":  # a stage of one device
        return f"{members[0].node_id:<{width}}  {members[0].torch_device} (mlx)"
    node_id = members[0].node_id
    if any(member.node_id != node_id for member in members):
        return " + ".join(str(member) for member in members)
    devices = "+".join(member.torch_device for member in members)
    indices = [member.torch_device.removeprefix("cuda:") for member in members]
    if len(indices) > 2 and all(index.isdigit() for index in indices):
        first, last = int(indices[0]), int(indices[-1])
        if [int(index) for index in indices] == list(range(first, last + 1)):
            devices = f"cuda:{first}-{last}"  # eight GPUs: cuda:0-7
    return f"{node_id:<{width}}  {devices:<7}"  # 7: "cuda:0 " and "cpu" line up


@dataclass(frozen=True)
class Infeasible:
    """No placement fits; `reason` says why in numbers."""

    reason: str

    def explain(self) -> list[str]:
        return [f"cannot place the model: {self.reason}"]


def place(shape: ModelShape, topology: Topology, request: PlacementRequest) -> Placement | Infeasible:
    """Split `shape` over the devices of `topology` for `request`, or say in numbers why not.

    Plans every pool of candidates (devices alone, like GPUs grouped for tensor parallelism) and
    keeps the best (`placement_groups.choose`); a forced `devices` list is planned as given.
    Nodes on one host share its RAM: each of their CPUs is offered its share (`shared_hosts`)."""
    request = request.for_shape(shape)
    topology = split_shared_memory(topology)
    if request.context_length > shape.max_context:
        return Infeasible(
            f"a context of {request.context_length} tokens is longer than {shape.name}'s "
            f"{shape.max_context}-token maximum"
        )
    costs, links = LayerCosts(shape, request), LinkTable(topology)
    if request.devices is not None:
        return _place_on_given_devices(costs, links, offered_devices(topology, request), request)
    pools = candidate_pools(topology, request, links, shape.hidden_size)
    if not shape.splits_over_ranks:
        pools = pools[:1]  # devices on their own: the family has no plan for a group of ranks
    results = [_place_among(costs, links, pool, request) for pool in pools]
    plans = [result for result in results if isinstance(result, Placement)]
    if not plans:
        return results[0]  # devices on their own hold the most layouts, so their reason says most
    chosen, comparison = choose(plans)
    if comparison is None:
        return chosen
    return replace(chosen, notes=(comparison, *chosen.notes))


def _place_among(
    costs: LayerCosts, links: LinkTable, offered: list[Candidate], request: PlacementRequest
) -> Placement | Infeasible:
    """The best plan over one pool of candidates (single devices or tensor-parallel groups)."""
    shape = costs.shape
    usable = [device for device in offered if device.usable_bytes > 0]
    # Fastest first: the time to read the whole model on the device (and a group's collectives).
    usable.sort(key=lambda device: costs.seconds(device, 0, shape.num_layers))
    if len(usable) < request.min_stages or shape.num_layers < request.min_stages:
        return Infeasible(
            f"{request.min_stages} stages were asked for, but {len(usable)} devices have free memory "
            f"and {shape.name} has {shape.num_layers} layers"
        )
    whole = next((device for device in usable if costs.fits(device, 0, shape.num_layers)), None)
    unit = _unit(whole) if whole is not None else "device"
    single = None
    if request.min_stages == 1 and whole is not None:
        single = _placement(costs, links, [whole], [0, shape.num_layers])
        if whole is usable[0]:
            return _with_reason(single, f"fits on its fastest {unit}")
    ring = (
        None
        if oversized_layer(costs, usable) is not None
        else _ring_fastest_first(costs, links, usable, request)
    )
    if ring is None:
        if single is not None:
            return _with_reason(single, f"fits on one {unit}, the fastest that holds it whole")
        return Infeasible(why_infeasible(costs, usable or offered, request))
    split = _placement(costs, links, *ring)
    if single is None:
        wanted = (
            f"{request.min_stages} stages were asked for"
            if request.min_stages > 1
            else "it fits on no device"
        )
        return _with_reason(split, f"split over {len(split.stages)} devices, fastest first: {wanted}")
    if single.predicted_seconds_per_token < SPLIT_GAIN_REQUIRED * split.predicted_seconds_per_token:
        return _with_reason(single, f"fits on one {unit}, and a split over faster devices gains too little")
    return _with_reason(
        split,
        f"split over {len(split.stages)} faster devices: on {single.stages[0].members[0]} alone, where it "
        f"fits whole, it would take {single.predicted_seconds_per_token * 1e3:.2f} ms per token",
    )


def _unit(device: Candidate) -> str:
    return "device" if device.size == 1 else "tensor-parallel group"


def _ring_fastest_first(
    costs: LayerCosts, links: LinkTable, usable: list[Candidate], request: PlacementRequest
) -> tuple[list[Candidate], list[int]] | None:
    """Devices join fastest first until a ring of them holds every layer: (ring, stage boundaries).

    When a ring holds enough in total but its ends cannot take the embedding or the head, a few
    other starting nodes are tried before another device joins; the cap keeps 100 nodes fast."""
    payload = costs.shape.hidden_size * 2  # only ranks hops against each other, so the dtype is moot
    fraction, layers = 0.0, 0
    for count, device in enumerate(usable, start=1):
        fraction += costs.model_fraction(device)
        layers += costs.max_layers(device)
        if count > costs.num_layers:
            break
        if count < request.min_stages or fraction < 1 or layers < costs.num_layers:
            continue
        order = pipeline_order(usable[:count], links, payload)
        for ring in (order, *islice(rotations(order), _ROTATIONS_TRIED)):
            boundaries = split_layers(costs, ring)
            if boundaries is not None:
                return ring, boundaries
    return None


def _place_on_given_devices(
    costs: LayerCosts, links: LinkTable, offered: list[Candidate], request: PlacementRequest
) -> Placement | Infeasible:
    by_address = {DeviceAddress(device.node_id, device.torch_device): device for device in offered}
    assert request.devices is not None
    missing = [str(address) for stage in request.devices for address in stage if address not in by_address]
    if missing:
        return Infeasible(f"the topology has no device {', '.join(missing)}")
    given = []
    for stage in request.devices:
        members = [by_address[address] for address in stage]
        if len(members) > 1 and any(member.engine == "mlx" for member in members):
            return Infeasible(
                f"an MLX device runs a stage on its own, not in a group: {' + '.join(map(str, stage))}"
            )
        if len({member.kind for member in members}) > 1:
            return Infeasible(
                f"a tensor-parallel group needs devices of one kind: {' + '.join(map(str, stage))}"
            )
        given.append(
            members[0] if len(members) == 1 else forced_group(members, links, costs.shape.hidden_size)
        )
    noun = "devices" if all(device.size == 1 for device in given) else "stages"
    if len(given) > costs.num_layers:
        return Infeasible(
            f"{len(given)} {noun} were given for {costs.shape.name}'s {costs.num_layers} layers; "
            "each stage needs at least one"
        )
    boundaries = split_layers(costs, given)
    if boundaries is None:
        return Infeasible(why_infeasible(costs, given, request, forced=True))
    return _with_reason(
        _placement(costs, links, given, boundaries), f"split over the {len(given)} given {noun}"
    )


def _with_reason(placement: Placement, reason: str) -> Placement:
    return replace(placement, notes=(reason, *placement.notes))


def _placement(
    costs: LayerCosts, links: LinkTable, order: list[Candidate], boundaries: list[int]
) -> Placement:
    hops = ring_hop_seconds(order, links, costs.shape.hidden_size)
    stages = []
    for device, start, end, hop in zip(order, boundaries[:-1], boundaries[1:], hops, strict=True):
        cost = costs.stage(device, start, end)
        stages.append(
            Stage(
                members=tuple(DeviceAddress(*member) for member in device.members),
                layers=LayerRange(start, end),
                weight_bytes=round(cost.weight_bytes),
                kv_bytes=round(cost.kv_bytes),
                compute_seconds=cost.read_bytes / device.bandwidth,
                send_seconds=hop,
                all_reduce_seconds=costs.collectives(device, start, end) * device.all_reduce_seconds,
                engine=device.engine,
            )
        )
    ring_pairs = (
        [(a.node_id, b.node_id) for a, b in zip(order, order[1:] + order[:1], strict=True)]
        if len(order) > 1
        else []
    )
    within_groups = [
        (a, b)
        for device in order
        for i, (a, _) in enumerate(device.members)
        for b, _ in device.members[i + 1 :]
    ]
    unmeasured = sorted(
        {tuple(sorted(pair)) for pair in ring_pairs + within_groups if not links.is_measured(*pair)}
    )
    notes = [
        f"no link measured between {source} and {target}: assumed {UNMEASURED_LATENCY * 1e3:g} ms "
        f"and {UNMEASURED_BANDWIDTH * 8 / 1e9:g} Gbit/s"
        for source, target in unmeasured
    ]
    return Placement(
        model_name=costs.shape.name,
        num_layers=costs.num_layers,
        stages=tuple(stages),
        request=costs.request,
        notes=tuple(notes),
        weight_format=costs.format.label if costs.format else "",
    )
