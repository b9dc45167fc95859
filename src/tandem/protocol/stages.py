"""The headers that travel between the runners of one instance with each step (`runner/wire.py`
carries them, beside the hidden states as plain tensors).

    rank 0 -> next stage leader -> ... -> last stage leader:  Step | KeepAlive | Stop
    last stage leader -> rank 0:                              Choices
    a stage's leader -> the other ranks of its group:         Step | KeepAlive | Stop

An image instance's stages pass `protocol.images`' messages instead (and KeepAlive, Stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tandem.model.sampling_params import SamplingParams
from tandem.model.step import StepPlan, TokenChoice
from tandem.protocol.images import ImageStageMessage


@dataclass(frozen=True)
class SequenceStart:
    """A sequence the last stage must start sampling for (its sampler state lives there)."""

    seq_id: int
    prompt_ids: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class Step:
    """Run `plan`. `starts`/`ends` tell the sampling stage which sequences began or ended since
    the last step. Within a tensor-parallel group running ahead, `keep` asks the followers to
    keep this step's greedy tokens and `feed` to take this step's token ids from them."""

    TAG: ClassVar[str] = "step"
    plan: StepPlan
    starts: tuple[SequenceStart, ...] = ()
    ends: tuple[int, ...] = ()
    keep: bool = False
    feed: bool = False

    def for_followers(self) -> Step:
        """What the other ranks of a stage need: the plan and the run-ahead marks."""
        return Step(self.plan, keep=self.keep, feed=self.feed)


@dataclass(frozen=True)
class KeepAlive:
    """Runs nothing; resets the others' wait for the next step (an idle instance's heartbeat)."""

    TAG: ClassVar[str] = "keep-alive"


@dataclass(frozen=True)
class Stop:
    TAG: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Choices:
    """The tokens the last stage chose, one per sampled chunk of the step, in plan order."""

    TAG: ClassVar[str] = "choices"
    choices: tuple[TokenChoice, ...]


StageHeader = Step | KeepAlive | Stop
StageMessage = Step | KeepAlive | Stop | Choices | ImageStageMessage
