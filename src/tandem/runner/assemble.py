"""From a runner spec to a running rank: the one way an engine is put together.

The runner process (`tandem.runner.main`), `tandem generate`, `tandem bench` (one GPU and every
plan over several), the tools and the tests all call `start_rank`: it installs the spec's engine
options, joins the instance's process group, creates the stage groups and the pipeline wire,
loads this rank's part of its stage (from the checkpoint, or random weights for a benchmark
shape), warms it up, and wires the executor that the cluster serves with:

- rank 0 gets an `LLMEngine` over a local, tensor-parallel or pipeline executor;
- the leader of every later stage serves the pipeline (`serve_stage`);
- every other rank of a tensor-parallel group follows its leader (`follow_leader`).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from tandem import settings
from tandem.engine.cuda.symmetric import group_all_reduce
from tandem.engine.device import resolve_device, resolve_dtype
from tandem.engine.embedding import Embedder
from tandem.engine.engine import DEFAULT_MAX_PREFILL_TOKENS, LLMEngine
from tandem.engine.executor import Executor, LocalExecutor
from tandem.engine.grammar import Grammars
from tandem.engine.interface import StageEngine
from tandem.engine.loader import load_stage
from tandem.engine.model_runner import ModelRunner
from tandem.engine.models import build_empty_model
from tandem.engine.models.llama import CausalLM
from tandem.engine.parallel.apply import apply_tensor_parallel, load_tensor_parallel_stage
from tandem.engine.parallel.group import AllReduce, TensorParallelGroup
from tandem.engine.parallel.latency import all_reduce_seconds
from tandem.engine.random_weights import random_stage
from tandem.errors import TandemError
from tandem.mlx import require_mlx
from tandem.model.config import context_size, load_model_config
from tandem.model.pooling import read_pooling
from tandem.model.tokenizer import Tokenizer
from tandem.protocol.runner import EngineName, RunnerSpec, StageReport
from tandem.runner.pipeline import PipelineExecutor, serve_stage
from tandem.runner.rendezvous import Forwarder, Gate, loopback_listener
from tandem.runner.stage_group import (
    StageChannel,
    StageGroups,
    TensorParallelExecutor,
    create_stage_groups,
    follow_leader,
)
from tandem.runner.wire import pipeline_wire

# How long a rank waits for the others: to join, while a large stage loads from disk (minutes),
# and for each message; an idle driver sends keep-alives well within it (RunnerSpec).
JOIN_TIMEOUT = timedelta(minutes=10)
DEFAULT_NUM_SLOTS = 8


@dataclass
class Rank:
    """One rank of an instance, loaded and warmed up. Rank 0 holds `engine`; every other rank
    `serve()`s until rank 0's engine is closed."""

    spec: RunnerSpec
    stage: StageEngine
    report: StageReport
    engine: LLMEngine | None = None
    serve_loop: Callable[[], None] | None = None

    def serve(self) -> None:
        """Follow rank 0's steps until it stops the instance (ranks other than 0)."""
        if self.serve_loop is None:
            raise RuntimeError("rank 0 drives its engine; only the other ranks serve")
        self.serve_loop()

    def keep_alive(self) -> Callable[[], None] | None:
        """What rank 0 calls while idle so the other ranks' waits do not time out."""
        executor = self.engine.executor if self.engine is not None else None
        return getattr(executor, "keep_alive", None)

    def embedder(self) -> Embedder | str:
        """What embeds this instance's inputs, or why nothing can: the checkpoint declares no
        pooling (not an embedding model), or the model is split over several ranks."""
        pooling = None if self.spec.random_weights_seed is not None else read_pooling(self.spec.model_dir)
        if pooling is None:
            return (
                "this model is not an embedding model: its checkpoint declares no sentence-transformers "
                "pooling (modules.json)"
            )
        if self.spec.world_size > 1:
            return "embeddings need the model on one device; launch it with min_stages 1 on one device"
        if not isinstance(self.stage, ModelRunner):
            return "embeddings are computed by the PyTorch engine; this instance runs on MLX"
        return Embedder(self.stage.model, pooling, self.spec.max_context)

    def close(self) -> None:
        """Rank 0: stop the other ranks (their serve loops return)."""
        executor = self.engine.executor if self.engine is not None else None
        shutdown = getattr(executor, "shutdown", None)
        if shutdown is not None:
            shutdown()


def start_rank(
    spec: RunnerSpec,
    on_listening: Callable[[int], None] | None = None,
    rendezvous_token: str | None = None,
) -> Rank:
    """Build rank `spec.rank` of its instance (see the module doc). `rendezvous_token` admits the
    ranks of several to rank 0's store (default: TANDEM_RENDEZVOUS_TOKEN). `on_listening` hears rank
    0's rendezvous port when the instance has several ranks and the spec let it pick one."""
    settings.use_engine_options(spec.options)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.engine == "mlx":  # it computes on MLX; its tensors cross the wire from the CPU
        device, dtype = torch.device("cpu"), None
    else:
        device = _torch_device(spec.device)
        config = load_model_config(spec.model_dir)
        quantized = spec.quantize is not None or config.quantization is not None
        dtype = resolve_dtype(spec.dtype, device, config.checkpoint_dtype, quantized)
    groups, wire = None, None
    if spec.world_size > 1:
        join_group(spec, rendezvous_token or settings.rendezvous_token(), on_listening)
        if spec.layout.num_stages > 1:  # every rank creates the same groups in the same order
            wire = pipeline_wire(device)
        groups = create_stage_groups(spec)
    stage, report = load_stage_engine(spec, groups, device, dtype)
    rank = Rank(spec, stage, report)
    channel = StageChannel.for_spec(spec, groups, device)
    samples = spec.tp_rank == 0 and spec.stage_index == spec.layout.num_stages - 1
    tokenizer = _tokenizer(spec) if spec.is_driver or samples else None
    eos = tokenizer.eos_token_ids if tokenizer else frozenset(stage.config.eos_token_ids)
    # The rank that samples compiles output constraints against the vocabulary (and rank 0 of a
    # pipeline too, to refuse one that does not compile before it reaches the last stage).
    grammars = Grammars(spec.model_dir, stage.config.vocab_size, eos) if tokenizer else None
    if spec.tp_rank > 0:
        rank.serve_loop = lambda: follow_leader(stage, channel)
    elif not spec.is_driver:
        assert wire is not None
        rank.serve_loop = lambda: serve_stage(stage, wire, spec.layout, spec.stage_index, channel, grammars)
    else:
        executor: Executor
        if spec.layout.num_stages > 1:
            assert wire is not None
            executor = PipelineExecutor(
                stage, wire, spec.layout, channel, grammars, spec.options.micro_batches
            )
        elif spec.tp_size > 1:
            executor = TensorParallelExecutor(stage, channel, grammars)
        else:
            executor = LocalExecutor(stage, grammars=grammars)
        rank.engine = LLMEngine(
            executor, tokenizer, eos, spec.max_context, spec.num_slots, spec.max_prefill_tokens
        )
    return rank


def _torch_device(name: str) -> torch.device:
    """The spec's device for the PyTorch engine; a GPU is made the current one."""
    device = resolve_device(name)
    if device.type == "cuda":  # "cuda" alone means the current GPU; set_device wants its index
        index = torch.cuda.current_device() if device.index is None else device.index
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def load_stage_engine(
    spec: RunnerSpec, groups: StageGroups | None, device: torch.device, dtype: torch.dtype | None
) -> tuple[StageEngine, StageReport]:
    """This rank's stage engine on the spec's engine, loaded and warmed up, and its report."""
    if spec.engine == "mlx":
        return _load_mlx_stage(spec)
    assert dtype is not None
    model, summing = load_shard(spec, groups, device, dtype)
    stage = ModelRunner(model, spec.num_slots, spec.max_context)
    stage.warm_up()  # all stages at once, before the first request
    latency = None
    if summing is not None and device.type == "cuda":
        latency = all_reduce_seconds(summing, stage.config.hidden_size, device, dtype)
    return stage, stage.report(summing.name if summing else None, latency)


def _load_mlx_stage(spec: RunnerSpec) -> tuple[StageEngine, StageReport]:
    """The stage on MLX (`spec.device`: auto, cpu or metal); only here is `mlx` imported."""
    require_mlx("an MLX stage")
    from tandem.mlx.engine import MLXStageEngine

    stage = MLXStageEngine.load(
        spec.model_dir, spec.stage, spec.num_slots, spec.max_context, device=spec.device, dtype=spec.dtype
    )
    stage.warm_up()
    return stage, stage.report()


def start_local_instance(specs: list[RunnerSpec], log: Path) -> tuple[Rank, list[subprocess.Popen]]:
    """An instance on this machine: rank 0 in this process, every other rank as a runner process
    (`python -m tandem.runner`, as a node starts them; their output appended to `log`), started
    once rank 0's rendezvous port is known. Benchmarks and tools drive rank 0's engine; closing
    it (`Rank.close`) ends the others."""
    others: list[subprocess.Popen] = []
    token = secrets.token_hex(32)
    environment = {**os.environ, settings.RENDEZVOUS_TOKEN_VARIABLE: token}

    def launch_others(port: int) -> None:
        for spec in specs[1:]:
            command = [sys.executable, "-m", "tandem.runner", replace(spec, master_port=port).to_json()]
            with log.open("a") as output:
                others.append(
                    subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
                )

    rank = start_rank(
        specs[0], on_listening=launch_others if len(specs) > 1 else None, rendezvous_token=token
    )
    return rank, others


def _tokenizer(spec: RunnerSpec) -> Tokenizer | None:
    """The checkpoint's tokenizer; a benchmark shape (random weights) has none, nor need a later
    stage's files hold one (its sampler then refuses constrained requests)."""
    missing = not (Path(spec.model_dir) / "tokenizer.json").is_file()
    if missing and (spec.random_weights_seed is not None or not spec.is_driver):
        return None
    return Tokenizer(spec.model_dir)


def interface_towards(host: str) -> str | None:
    """The name of the local network interface that traffic to `host` leaves through."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # UDP connect sends nothing; it only picks a route
            local_ip = probe.getsockname()[0]
    except OSError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local_ip for a in addresses):
            return name
    return None


def join_group(spec: RunnerSpec, token: str | None, on_listening: Callable[[int], None] | None) -> None:
    """Join the instance's process group through rank 0's store, which listens on loopback behind
    a gate on `spec.master_host` that admits only the holders of `token` (`rendezvous.py`)."""
    if token is None:
        raise TandemError(
            f"rank {spec.rank} of {spec.world_size} needs its instance's rendezvous token "
            f"({settings.RENDEZVOUS_TOKEN_VARIABLE}; a node sets it for its runners)"
        )
    interface = interface_towards(spec.master_host)
    if interface:
        # gloo and NCCL otherwise pick an interface from the host name, which may not reach peers;
        # on this one they listen on its address alone.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    if spec.is_driver:
        listener = loopback_listener()
        store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]
            "127.0.0.1",
            listener.getsockname()[1],
            spec.world_size,
            is_master=True,
            timeout=JOIN_TIMEOUT,
            wait_for_workers=False,
            master_listen_fd=listener.detach(),  # the store owns the socket from here on
        )
        gate = Gate(spec.master_host, store.port, token, spec.master_port)  # 0: a free port, reported
        if on_listening is not None:
            on_listening(gate.port)
    else:
        forwarder = Forwarder(spec.master_host, spec.master_port, token)
        store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]
            "127.0.0.1", forwarder.port, spec.world_size, is_master=False, timeout=JOIN_TIMEOUT
        )
    dist.init_process_group(
        spec.backend, store=store, rank=spec.rank, world_size=spec.world_size, timeout=JOIN_TIMEOUT
    )


def load_shard(
    spec: RunnerSpec, groups: StageGroups | None, device: torch.device, dtype: torch.dtype
) -> tuple[CausalLM, AllReduce | None]:
    """This rank's part of its stage: the whole stage, or its tensor-parallel shard; and the
    all-reduce its group sums with (None without a group)."""
    config = load_model_config(spec.model_dir)
    group, summing = None, None
    if groups is not None:
        summing = group_all_reduce(groups.data, groups.control, device, dtype, config.hidden_size)
        group = TensorParallelGroup.from_process_group(groups.data, all_reduce=summing)
    if spec.random_weights_seed is not None:
        model = build_empty_model(config, spec.stage)
        if group is not None:
            apply_tensor_parallel(model, group)
        seed = spec.random_weights_seed + spec.rank
        return random_stage(model, config, device, dtype, seed, spec.quantize), summing
    if group is None:
        return load_stage(spec.model_dir, spec.stage, device, dtype, config, spec.quantize), None
    shard = load_tensor_parallel_stage(
        spec.model_dir, spec.stage, group, device, dtype, config, spec.quantize
    )
    return shard, summing


def local_spec(
    model_dir: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    max_context: int | None = None,
    num_slots: int = DEFAULT_NUM_SLOTS,
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
    options: settings.EngineOptions | None = None,
    random_weights_seed: int | None = None,
    quantize: str | None = None,
    engine: EngineName = "torch",
) -> RunnerSpec:
    """The spec of an instance of one rank holding the whole model in this process; `quantize`
    ("int8", "int4") quantizes a 16/32-bit checkpoint as it loads; `engine` "mlx" runs it on MLX
    (`device` auto, cpu or metal)."""
    config = load_model_config(model_dir)
    return RunnerSpec(
        instance_id="local",
        rank=0,
        world_size=1,
        model_dir=str(model_dir),
        layer_start=0,
        layer_end=config.num_layers,
        num_layers=config.num_layers,
        device=device or "auto",
        dtype=dtype,
        max_context=context_size(max_context, config.max_position_embeddings),
        num_slots=num_slots,
        max_prefill_tokens=max_prefill_tokens,
        options=options or settings.engine_options(),
        random_weights_seed=random_weights_seed,
        quantize=quantize,
        engine=engine,
    )


def create_local_engine(model_dir: str | Path, **options) -> LLMEngine:
    """An engine over the whole model in this process (`local_spec`'s arguments)."""
    engine = start_rank(local_spec(model_dir, **options)).engine
    assert engine is not None
    return engine
