"""What a request asks of the sampler, validated once at the door. Pure Python."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.errors import InvalidRequestError
from tandem.model.output_constraint import OutputConstraint

MAX_TOP_LOGPROBS = 20
# Below this temperature sampling is greedy: dividing float32 logits by less would overflow to
# infinity and leave no distribution to draw from (vLLM draws the same line).
GREEDY_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 0.01  # dividing logits by less overflows the same way


@dataclass(frozen=True)
class SamplingParams:
    """Sampling and stopping settings of one request. `temperature == 0` (or below 1e-5) means greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # multiplicative, over prompt and output (the transformers rule)
    presence_penalty: float = 0.0  # additive, over output tokens (the OpenAI rule)
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; n >= 0: the chosen token's log-probability and the top n
    skip_special_tokens: bool = True  # False: special tokens' text stays (a model's tool-call markers)
    constraint: OutputConstraint | None = None  # a grammar the output must follow (JSON, tool calls)
    # A resumed request's output produced before (on an instance since lost): that many tokens end
    # its prompt, count as output for penalties and grammar, and its draws go on from that index.
    resumed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be at least 1"),
            (0.0 <= self.temperature <= 100.0, "temperature must be between 0 and 100"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be a non-negative integer"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (
                MIN_REPETITION_PENALTY <= self.repetition_penalty <= 100.0,
                f"repetition_penalty must be between {MIN_REPETITION_PENALTY} and 100",
            ),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be between -2 and 2"),
            (
                self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**63),
                "seed must be a non-negative integer below 2**63",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
            (isinstance(self.resumed, int) and self.resumed >= 0, "resumed must be a non-negative integer"),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
