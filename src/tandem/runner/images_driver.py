"""Rank 0's request loop for an image model: `Generate` commands whose request carries
`ImageFields` in, `Accepted`, `ImageProgress` after every step and `Images` out.

Requests run one at a time, in order of arrival (a request's `n` images are one batch, cut into
micro-batches that are in flight through the stages together). Between steps the loop reads the
commands that arrived: an `Abort` of the running request stops it after that step, one of a
queued request drops it, and requests beyond the queue limit are refused with `Busy`.
"""

from __future__ import annotations

import base64
import queue
from collections import deque
from pathlib import Path

from tandem.errors import InvalidRequestError, TandemError
from tandem.model.image_request import ImageRequest, check_model_task, image_request
from tandem.protocol.images import ImageFields, ImageProgress, Images
from tandem.protocol.runner import (
    DEFAULT_QUEUE_LIMIT,
    Abort,
    Accepted,
    Busy,
    Finished,
    Generate,
    GenerateRequest,
    Load,
    Rejected,
    RequestError,
    RunnerCommand,
    Shutdown,
)
from tandem.runner.driver import Emit
from tandem.runner.images_assemble import ImageRank


class Aborted(Exception):
    """The running request was aborted (raised from the step callback, between steps)."""


def checked_request(rank: ImageRank, request: GenerateRequest) -> ImageRequest:
    """The request's images as the model can make them; InvalidRequestError naming the field."""
    assert rank.pipeline is not None
    check_model_task(Path(rank.spec.model_dir).name, True, request.image is not None)
    fields = request.image or ImageFields()
    return image_request(
        rank.pipeline.config,
        request.prompt,
        size=fields.size,
        width=fields.width,
        height=fields.height,
        steps=fields.steps,
        guidance=fields.guidance,
        seed=fields.seed,
        n=fields.n,
    )


class ImageDriver:
    def __init__(
        self,
        rank: ImageRank,
        emit: Emit,
        keep_alive_seconds: float = 60.0,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        micro_batch: int | None = 1,
    ) -> None:
        assert rank.pipeline is not None, "rank 0 drives the pipeline"
        self.rank = rank
        self.pipeline = rank.pipeline
        self.emit = emit
        self.keep_alive = rank.keep_alive()
        self.keep_alive_seconds = keep_alive_seconds
        self.queue_limit = queue_limit
        self.micro_batch = micro_batch  # images per micro-batch through a split transformer
        self.queued: deque[tuple[str, ImageRequest]] = deque()
        self.running: str | None = None
        self.abort_running = False
        self.stopping = False
        self._reported = Load(0, 0)

    def run(self, commands: queue.Queue) -> None:
        while not self.stopping:
            self.report_load()
            if self.queued:
                self.generate(*self.queued.popleft(), commands)
                continue
            try:
                command = commands.get(timeout=self.keep_alive_seconds)
            except queue.Empty:
                if self.keep_alive is not None:
                    self.keep_alive()
                continue
            self.handle(command)

    def handle(self, command: RunnerCommand | Rejected) -> None:
        match command:
            case Shutdown():
                self.stopping = True
            case Rejected():
                self.emit(command)
            case Generate(request_id, request):
                self.admit(request_id, request)
            case Abort(request_id):
                if request_id == self.running:
                    self.abort_running = True
                elif any(queued_id == request_id for queued_id, _ in self.queued):
                    self.queued = deque(item for item in self.queued if item[0] != request_id)
                    self.emit(Finished(request_id, "abort"))

    def admit(self, request_id: str, request: GenerateRequest) -> None:
        if len(self.queued) >= self.queue_limit:
            self.emit(
                Busy(
                    request_id,
                    f"the instance's queue is full ({len(self.queued)} image requests); retry shortly",
                )
            )
            return
        try:
            checked = checked_request(self.rank, request)
        except InvalidRequestError as error:
            self.emit(Rejected(request_id, str(error)))
            return
        self.emit(Accepted(request_id, 0))
        self.queued.append((request_id, checked))

    def between_steps(self, commands: queue.Queue) -> None:
        """Take the commands that arrived during a step; stop the running request if aborted."""
        while True:
            try:
                self.handle(commands.get_nowait())
            except queue.Empty:
                break
        self.report_load()
        if self.abort_running or self.stopping:
            raise Aborted

    def generate(self, request_id: str, request: ImageRequest, commands: queue.Queue) -> None:
        self.running, self.abort_running = request_id, False

        def on_step(done: int, total: int) -> None:
            self.emit(ImageProgress(request_id, done, total))
            self.between_steps(commands)

        try:
            result = self.pipeline.generate(request, micro_batch=self.micro_batch, on_step=on_step)
        except Aborted:
            self.emit(Finished(request_id, "abort"))
            return
        except TandemError as error:
            self.emit(RequestError(str(error), request_id))
            return
        finally:
            self.running = None
        pngs = tuple(base64.b64encode(result.png(i)).decode("ascii") for i in range(request.n))
        self.emit(
            Images(request_id, pngs, request.width, request.height, result.seed, result.steps, result.seconds)
        )

    def report_load(self) -> None:
        load = Load(requests=len(self.queued) + (self.running is not None), waiting=len(self.queued))
        if load != self._reported:
            self._reported = load
            self.emit(load)
