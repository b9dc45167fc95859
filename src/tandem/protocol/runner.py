"""A node and its runner processes: the spec a runner starts from (its command line), the
commands it reads on stdin and the events it writes on stdout, one JSON message a line.

    node -> runner:  Generate | Abort | Shutdown
    runner -> node:  Listening | Ready | Failed | Load | CacheReport   (about the runner)
                     Accepted | Rejected | Busy | Token | Embedding | Finished | RequestError   (about one request)
                     ImageProgress | Images   (about one request to an image model: `protocol.images`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import LayerRange, StageSpec
from tandem.model.tool_calls import FormatName, ToolCall, ToolChoice, ToolFunction
from tandem.protocol import codec
from tandem.protocol.images import ImageFields, ImageProgress, Images
from tandem.settings import EngineOptions

Backend = Literal["gloo", "nccl"]
EngineName = Literal["torch", "mlx"]  # the PyTorch engine (engine/), or the MLX one (mlx/)
Task = Literal["text", "image"]  # what an instance's model makes: tokens, or images (FLUX.1)
DEFAULT_QUEUE_LIMIT = 64  # requests an instance holds beyond its slots, waiting for room


@dataclass(frozen=True)
class InstanceLayout:
    """How an instance's ranks form pipeline stages: stage s is a tensor-parallel group of
    `stage_sizes[s]` consecutive ranks, the first of which (its leader) talks to the other stages.

    Rank 0 leads stage 0 and drives the instance; the leader of the last stage samples."""

    stage_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.stage_sizes or min(self.stage_sizes) < 1:
            raise ValueError(f"every stage needs at least one rank, got {self.stage_sizes}")

    @property
    def world_size(self) -> int:
        return sum(self.stage_sizes)

    @property
    def num_stages(self) -> int:
        return len(self.stage_sizes)

    def ranks(self, stage: int) -> range:
        """The global ranks of stage `stage`, its leader first."""
        first = sum(self.stage_sizes[:stage])
        return range(first, first + self.stage_sizes[stage])

    def leader(self, stage: int) -> int:
        return self.ranks(stage).start

    def stage_of(self, rank: int) -> int:
        for stage in range(self.num_stages):
            if rank in self.ranks(stage):
                return stage
        raise ValueError(f"rank {rank} is outside a world of {self.world_size}")


@dataclass(frozen=True)
class RunnerSpec:
    """One rank of an instance. `layer_start`/`layer_end` are its stage's layers; with
    `stage_sizes` several ranks share a stage as a tensor-parallel group (default: a rank each)."""

    instance_id: str
    rank: int
    world_size: int
    model_dir: str
    layer_start: int
    layer_end: int
    num_layers: int
    device: str  # "cpu", "cuda:0"
    dtype: str | None  # None: the device's default
    max_context: int
    num_slots: int
    max_prefill_tokens: int
    backend: Backend = "gloo"  # of the whole instance: pipeline sends between stage leaders
    master_host: str = "127.0.0.1"
    master_port: int = 0  # rank 0 picks a free port when 0 and reports it
    threads: int | None = None  # torch CPU threads; None: torch's default
    stage_sizes: tuple[int, ...] | None = None  # ranks per pipeline stage; None: one each
    # Backend of each stage's tensor-parallel group (NCCL for a group of GPUs inside a gloo
    # instance); None: `backend` for all. Every rank must know all of them to create the groups.
    stage_backends: tuple[Backend, ...] | None = None
    keep_alive_seconds: float = 60.0  # an idle driver's interval between keep-alives to the others
    options: EngineOptions = field(default_factory=EngineOptions)
    quantize: str | None = None  # "int8" / "int4" ("fp8": benchmarks only): quantize as it loads
    # Weights drawn at random with this seed instead of read from `model_dir` (which then needs
    # only its config.json): the benchmark's shapes; None: the checkpoint's weights.
    random_weights_seed: int | None = None
    # Requests rank 0 holds beyond `num_slots`; one more is refused with `Busy`.
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    # What computes this rank's stage: "mlx" runs it on MLX (`device` "auto", "cpu" or "metal"),
    # a stage of one rank in a gloo instance, its hidden states crossing as torch CPU tensors.
    engine: EngineName = "torch"
    # "image": a FLUX.1 checkpoint in diffusers' layout, its transformer's blocks as the layers
    # (`runner/images_assemble.py`)
    task: Task = "text"

    def __post_init__(self) -> None:
        if self.queue_limit < 0:
            raise ValueError(f"queue_limit must be 0 or more, got {self.queue_limit}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")
        if self.layout.world_size != self.world_size:
            raise ValueError(f"stage sizes {self.stage_sizes} do not add up to a world of {self.world_size}")
        if len(self.group_backends) != self.layout.num_stages:
            raise ValueError("stage_backends needs one backend per stage")
        if self.engine == "mlx":
            self._check_mlx()

    def _check_mlx(self) -> None:
        """What an MLX stage cannot be, each refused in one line."""
        if self.tp_size > 1:
            raise ValueError("an MLX stage runs on one device: it cannot be part of a tensor-parallel group")
        if self.backend != "gloo":
            raise ValueError("an instance with an MLX stage sends between its stages over gloo, not nccl")
        if self.quantize is not None:
            raise ValueError(
                "the MLX engine does not quantize as it loads; give it an MLX quantized checkpoint"
            )
        if self.random_weights_seed is not None:
            raise ValueError("the MLX engine loads checkpoints; random weights are the PyTorch engine's")

    @property
    def layout(self) -> InstanceLayout:
        return InstanceLayout(self.stage_sizes or (1,) * self.world_size)

    @property
    def group_backends(self) -> tuple[Backend, ...]:
        return self.stage_backends or (self.backend,) * self.layout.num_stages

    @property
    def stage_index(self) -> int:
        return self.layout.stage_of(self.rank)

    @property
    def tp_rank(self) -> int:
        """This rank's place within its stage's tensor-parallel group (0: the leader)."""
        return self.rank - self.layout.leader(self.stage_index)

    @property
    def tp_size(self) -> int:
        return self.layout.stage_sizes[self.stage_index]

    @property
    def stage(self) -> StageSpec:
        return StageSpec(LayerRange(self.layer_start, self.layer_end), self.num_layers)

    @property
    def is_driver(self) -> bool:
        """Rank 0 takes requests, schedules, and runs the first stage."""
        return self.rank == 0

    def to_json(self) -> str:
        return codec.encode(self).decode()

    @classmethod
    def from_json(cls, text: str) -> RunnerSpec:
        return codec.decode(cls, text)


# --- node -> runner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, as the chat template renders it: an assistant's may hold
    the tool calls it made, a `tool` message answers the call `tool_call_id` (of function `name`)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """What to generate from: exactly one of a prompt, chat messages or token ids. With chat
    messages, `tools` are rendered by the chat template; `tool_choice` "required" makes the
    answer one call (of `forced_tool` alone, when named), forced by a grammar; "none" renders
    no tools."""

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    prompt_ids: tuple[int, ...] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    tools: tuple[ToolFunction, ...] = ()
    tool_choice: ToolChoice = "auto"
    forced_tool: str | None = None
    # A request resumed on a new instance after its old one was lost: the tokens it had already
    # sent. They are computed after the prompt, not sent again, and count against max_tokens.
    resume_ids: tuple[int, ...] = ()
    embed: bool = False  # the input's embedding (an `Embedding` event) instead of generated tokens
    image: ImageFields | None = None  # images of `prompt` (an image model's `Images` event)

    def __post_init__(self) -> None:
        given = [name for name in ("prompt", "messages", "prompt_ids") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a request needs exactly one of prompt, messages or prompt_ids")
        if self.forced_tool is not None and self.forced_tool not in {tool.name for tool in self.tools}:
            raise ValueError(f"tool_choice names {self.forced_tool!r}, which is not among the tools")
        if len(self.resume_ids) >= self.params.max_tokens:
            raise ValueError("a resumed request must have tokens left to generate")


@dataclass(frozen=True)
class Generate:
    TAG: ClassVar[str] = "generate"
    request_id: str
    request: GenerateRequest


@dataclass(frozen=True)
class Abort:
    TAG: ClassVar[str] = "abort"
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    TAG: ClassVar[str] = "shutdown"


RunnerCommand = Generate | Abort | Shutdown


# --- runner -> node ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageReport:
    """What a loaded stage holds, for the node and placement."""

    engine: str  # "torch" or "mlx"
    device: str  # where it computes: "cpu", "cuda:0", "metal"
    parameter_bytes: int
    kv_cache_bytes: int
    all_reduce: str | None = None  # how its tensor-parallel group sums (None without a group)
    all_reduce_seconds: float | None = None  # one decode row's sum with its norm (GPU groups)


@dataclass(frozen=True)
class Listening:
    """Rank 0 of an instance of several ranks: its process-group rendezvous is open."""

    TAG: ClassVar[str] = "listening"
    port: int


@dataclass(frozen=True)
class Ready:
    TAG: ClassVar[str] = "ready"
    rank: int
    stage: int
    tp_rank: int
    layers: LayerRange
    report: StageReport


@dataclass(frozen=True)
class Failed:
    """The runner cannot go on (it exits after this)."""

    TAG: ClassVar[str] = "failed"
    message: str


@dataclass(frozen=True)
class Alive:
    """The runner's pulse, every `ALIVE_SECONDS` from a thread of its own from the moment it
    starts: a runner that stops sending it (a stopped or hung process) is killed by its node
    (`node/supervisor.py`), which is how a stage stuck while its node still answers is found."""

    TAG: ClassVar[str] = "alive"


ALIVE_SECONDS = 2.0


@dataclass(frozen=True)
class CacheReport:
    """Rank 0's paged KV cache now: blocks free of the pool, and the prefix cache's counters
    (blocks of prompts found cached or not). Sent when it changed and the engine went idle, or
    at most every `CACHE_REPORT_SECONDS` while it works."""

    TAG: ClassVar[str] = "cache"
    block_size: int
    blocks_total: int
    blocks_free: int
    prefix_hits: int
    prefix_misses: int


CACHE_REPORT_SECONDS = 1.0


@dataclass(frozen=True)
class Accepted:
    """The request runs; `tool_format` is how its model writes tool calls (None: no tools)."""

    TAG: ClassVar[str] = "accepted"
    request_id: str
    prompt_tokens: int
    tool_format: FormatName | None = None


@dataclass(frozen=True)
class Rejected:
    """The request was refused before it started (bad prompt or settings); nothing ran."""

    TAG: ClassVar[str] = "rejected"
    request_id: str
    message: str


@dataclass(frozen=True)
class Busy:
    """The request was refused because the instance's queue is full; nothing ran. Retry later."""

    TAG: ClassVar[str] = "busy"
    request_id: str
    message: str


@dataclass(frozen=True)
class Load:
    """Rank 0's requests now: those it holds (`requests`), of which `waiting` wait for a place in
    the engine. Sent whenever either changes."""

    TAG: ClassVar[str] = "load"
    requests: int
    waiting: int


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


FinishReasonName = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Token:
    """One generated token; the last of a request carries `finish_reason`."""

    TAG: ClassVar[str] = "token"
    request_id: str
    token_id: int
    text: str
    token: str | None = None  # the token alone, decoded (with log-probabilities)
    logprob: float | None = None
    top_logprobs: tuple[TopLogprob, ...] | None = None
    finish_reason: FinishReasonName | None = None
    stop_sequence: str | None = None


@dataclass(frozen=True)
class Finished:
    """The request ended without a final token (it was aborted)."""

    TAG: ClassVar[str] = "finished"
    request_id: str
    finish_reason: FinishReasonName


@dataclass(frozen=True)
class Embedding:
    """The embedding of an `embed` request's input: its one answer after `Accepted`."""

    TAG: ClassVar[str] = "embedding"
    request_id: str
    vector: tuple[float, ...]
    normalized: bool = False  # scaled to unit length (so a prefix is renormalised when shortened)


@dataclass(frozen=True)
class RequestError:
    """The request failed while running (its runner exited, a peer went away)."""

    TAG: ClassVar[str] = "error"
    message: str
    request_id: str | None = None


RequestEvent = (
    Accepted | Rejected | Busy | Token | Embedding | Finished | RequestError | ImageProgress | Images
)
RunnerEvent = Listening | Ready | Failed | Load | CacheReport | Alive | RequestEvent


def ends_request(event: RequestEvent) -> bool:
    """Whether `event` is the last one of its request."""
    if isinstance(event, Token):
        return event.finish_reason is not None
    return not isinstance(event, Accepted | ImageProgress)
