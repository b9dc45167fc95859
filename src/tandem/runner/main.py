"""Runner process entry point: `python -m tandem.runner SPEC_JSON`.

Joins the instance's process group (and its stage's tensor-parallel group), loads its stage or
its shard of it, reports `ready`, then serves: rank 0 takes requests from stdin, the leaders of
later stages follow rank 0's plans around the pipeline, and the other ranks of a stage follow
their leader. Logs go to stderr.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import traceback
from datetime import timedelta

import psutil
import torch
import torch.distributed as dist

from tandem.engine.cuda.symmetric import group_all_reduce
from tandem.engine.device import resolve_device, resolve_dtype
from tandem.engine.engine import LLMEngine
from tandem.engine.executor import LocalExecutor
from tandem.engine.loader import load_stage, parameter_bytes
from tandem.engine.model_runner import ModelRunner
from tandem.engine.models.llama import CausalLM
from tandem.engine.parallel.apply import load_tensor_parallel_stage
from tandem.engine.parallel.group import TensorParallelGroup
from tandem.engine.tokenizer import Tokenizer
from tandem.errors import TandemError
from tandem.model.config import load_model_config
from tandem.runner.driver import Driver, Emit, line_emitter, read_commands
from tandem.runner.pipeline import PipelineExecutor, serve_stage
from tandem.runner.spec import RunnerSpec
from tandem.runner.stage_group import (
    StageChannel,
    StageGroups,
    TensorParallelExecutor,
    create_stage_groups,
    follow_leader,
)
from tandem.runner.wire import Wire, pipeline_wire

# How long a rank waits for the others: to join, while a large stage loads from disk (minutes),
# and for each message; an idle driver sends keep-alives well within it (RunnerSpec).
JOIN_TIMEOUT = timedelta(minutes=10)


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


def join_group(spec: RunnerSpec, emit: Emit) -> None:
    interface = interface_towards(spec.master_host)
    if interface:
        # gloo and NCCL otherwise pick an interface from the host name, which may not reach peers.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    if spec.is_driver:
        store = dist.TCPStore(
            spec.master_host,
            spec.master_port,
            spec.world_size,
            is_master=True,
            timeout=JOIN_TIMEOUT,
            wait_for_workers=False,
        )
        emit({"event": "listening", "port": store.port})
    else:
        store = dist.TCPStore(
            spec.master_host, spec.master_port, spec.world_size, is_master=False, timeout=JOIN_TIMEOUT
        )
    dist.init_process_group(
        spec.backend, store=store, rank=spec.rank, world_size=spec.world_size, timeout=JOIN_TIMEOUT
    )


def load_shard(
    spec: RunnerSpec, groups: StageGroups | None, device: torch.device, dtype: torch.dtype
) -> tuple[CausalLM, str | None]:
    """This rank's part of its stage: the whole stage, or its tensor-parallel shard; and the
    all-reduce its group sums with (None without a group)."""
    if groups is None:
        return load_stage(spec.model_dir, spec.stage, device, dtype, quantize=spec.quantize), None
    config = load_model_config(spec.model_dir)
    all_reduce = group_all_reduce(groups.data, groups.control, device, dtype, config.hidden_size)
    group = TensorParallelGroup.from_process_group(groups.data, all_reduce=all_reduce)
    model = load_tensor_parallel_stage(
        spec.model_dir, spec.stage, group, device, dtype, config, spec.quantize
    )
    return model, all_reduce.name


def run(spec: RunnerSpec, emit: Emit) -> None:
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    config = load_model_config(spec.model_dir)
    quantized = spec.quantize is not None or config.quantization is not None
    dtype = resolve_dtype(spec.dtype, device, config.checkpoint_dtype, quantized)
    groups, wire = None, None
    if spec.world_size > 1:
        join_group(spec, emit)
        if spec.layout.num_stages > 1:  # every rank creates the same groups in the same order
            wire = pipeline_wire(device)
        groups = create_stage_groups(spec)
    model, all_reduce = load_shard(spec, groups, device, dtype)
    runner = ModelRunner(model, spec.num_slots, spec.max_context)
    runner.warm_up()  # all stages at once, before the first request
    emit(
        {
            "event": "ready",
            "rank": spec.rank,
            "stage": spec.stage_index,
            "tp_rank": spec.tp_rank,
            "parameter_bytes": parameter_bytes(model),
            "kv_cache_bytes": runner.kv_cache.bytes(),
            "layers": [spec.layer_start, spec.layer_end],
            "all_reduce": all_reduce,
        }
    )
    channel = StageChannel.for_spec(spec, groups, device)
    if spec.tp_rank > 0:
        follow_leader(runner, channel)
        return
    if not spec.is_driver:
        assert wire is not None
        serve_stage(runner, wire, spec.layout, spec.stage_index, channel)
        return
    tokenizer = Tokenizer(spec.model_dir)
    executor = make_driver_executor(spec, runner, wire, channel)
    engine = LLMEngine(
        executor,
        tokenizer,
        tokenizer.eos_token_ids,
        spec.max_context,
        spec.num_slots,
        spec.max_prefill_tokens,
    )
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=read_commands, args=(sys.stdin, commands), daemon=True).start()
    others = executor if isinstance(executor, PipelineExecutor | TensorParallelExecutor) else None
    try:
        keep_alive = others.keep_alive if others else None
        Driver(
            engine,
            emit,
            vocab_size=runner.model.config.vocab_size,
            keep_alive=keep_alive,
            keep_alive_seconds=spec.keep_alive_seconds,
        ).run(commands)
    finally:
        if others:
            others.shutdown()


def make_driver_executor(
    spec: RunnerSpec, runner: ModelRunner, wire: Wire | None, channel: StageChannel
) -> LocalExecutor | PipelineExecutor:
    """Rank 0's executor: through the pipeline, with its tensor-parallel group, or alone."""
    if spec.layout.num_stages > 1:
        assert wire is not None
        return PipelineExecutor(runner, wire, spec.layout, channel)
    if spec.tp_size > 1:
        return TensorParallelExecutor(runner, channel)
    return LocalExecutor(runner)


def main() -> int:
    emit = line_emitter(sys.stdout)
    try:
        spec = RunnerSpec.from_json(sys.argv[1])
        run(spec, emit)
    except TandemError as error:
        emit({"event": "failed", "message": str(error)})
        return 1
    except Exception as error:  # report the cause to the node in one line, the detail to the log
        traceback.print_exc()
        emit({"event": "failed", "message": f"{type(error).__name__}: {error}"})
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
