"""Runner process entry point: `python -m tandem.runner SPEC_JSON`.

Builds its rank (`assemble.start_rank`: joins the instance's process group, loads its part of
its stage), reports `Ready`, then serves: rank 0 takes requests from stdin (`driver.py`), the
other ranks follow rank 0's steps. An image model's ranks (`spec.task == "image"`) are built and
served by `images_assemble` and `images_driver`. Events go to stdout as JSON lines, logs to stderr.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback

import torch.distributed as dist

from tandem.errors import TandemError
from tandem.protocol.runner import ALIVE_SECONDS, Alive, Failed, Listening, Ready, RunnerSpec
from tandem.runner.assemble import start_rank
from tandem.runner.driver import Driver, Emit, line_emitter, prompt_preparer, read_commands
from tandem.runner.images_assemble import start_image_rank
from tandem.runner.images_driver import ImageDriver


def run(spec: RunnerSpec, emit: Emit) -> None:
    if spec.task == "image":
        run_images(spec, emit)
        return
    rank = start_rank(spec, on_listening=lambda port: emit(Listening(port)))
    emit(Ready(spec.rank, spec.stage_index, spec.tp_rank, spec.stage.layers, rank.report))
    if rank.engine is None:
        rank.serve()
        return
    commands: queue.Queue = queue.Queue()
    prepare = prompt_preparer(rank.engine, vocab_size=rank.stage.config.vocab_size)
    threading.Thread(target=read_commands, args=(sys.stdin, commands, prepare), daemon=True).start()
    try:
        Driver(
            rank.engine,
            emit,
            vocab_size=rank.stage.config.vocab_size,
            keep_alive=rank.keep_alive(),
            keep_alive_seconds=spec.keep_alive_seconds,
            num_slots=spec.num_slots,
            queue_limit=spec.queue_limit,
            embedder=rank.embedder(),
        ).run(commands)
    finally:
        rank.close()


def run_images(spec: RunnerSpec, emit: Emit) -> None:
    """An image model's rank (`images_assemble`): rank 0 serves requests, the others the ring."""
    rank = start_image_rank(spec, on_listening=lambda port: emit(Listening(port)))
    emit(Ready(spec.rank, spec.stage_index, 0, spec.stage.layers, rank.report))
    if rank.pipeline is None:
        rank.serve()
        return
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=read_commands, args=(sys.stdin, commands), daemon=True).start()
    try:
        micro_batch = 1 if spec.world_size > 1 else None  # one image at a time keeps every stage busy
        ImageDriver(rank, emit, spec.keep_alive_seconds, spec.queue_limit, micro_batch).run(commands)
    finally:
        rank.close()


def pulse(emit: Emit) -> None:
    """The pulse thread: `Alive` every ALIVE_SECONDS for as long as the process runs."""
    while True:
        try:
            emit(Alive())
        except (OSError, ValueError):  # the node closed our stdout: the process is ending
            return
        time.sleep(ALIVE_SECONDS)


def main() -> int:
    emit = line_emitter(sys.stdout)
    threading.Thread(target=pulse, args=(emit,), daemon=True, name="pulse").start()
    try:
        spec = RunnerSpec.from_json(sys.argv[1])
        run(spec, emit)
    except TandemError as error:
        emit(Failed(str(error)))
        return 1
    except Exception as error:  # report the cause to the node in one line, the detail to the log
        traceback.print_exc()
        emit(Failed(f"{type(error).__name__}: {error}"))
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
