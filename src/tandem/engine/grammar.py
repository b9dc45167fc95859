"""Output constraints compiled against a checkpoint's vocabulary (xgrammar), and the per-step
token masks they give, applied inside a batched decode to the rows that carry a constraint.

The compiler is built on the first constrained request (it reads the tokenizer) and caches
compiled grammars, so a schema sent again compiles once. A matcher per sequence follows the
tokens chosen and says which may come next; at the end of the grammar only end tokens may.
xgrammar is imported only once a constraint arrives: the engine runs without it elsewhere.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tandem.errors import InvalidRequestError
from tandem.model.output_constraint import OutputConstraint

if TYPE_CHECKING:
    import xgrammar


class Grammars:
    """Compiles constraints for one checkpoint: its tokenizer, the model's logit width and its
    end tokens (allowed once a grammar is complete)."""

    def __init__(self, model_dir: str | Path, vocab_size: int, stop_token_ids: frozenset[int]) -> None:
        self.model_dir = Path(model_dir)
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)

    @functools.cached_property
    def compiler(self) -> xgrammar.GrammarCompiler:
        import xgrammar
        from transformers import PreTrainedTokenizerFast

        path = self.model_dir / "tokenizer.json"
        if not path.is_file():
            raise InvalidRequestError("structured output needs the model's tokenizer.json")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids or None
        )
        return xgrammar.GrammarCompiler(info, max_threads=1)

    def matcher(self, constraint: OutputConstraint) -> xgrammar.GrammarMatcher:
        """A fresh matcher at the start of `constraint`; InvalidRequestError if it does not compile."""
        import xgrammar

        try:
            if constraint.kind in ("json", "json_schema"):
                # Compact JSON: free whitespace lets an unsure model pad forever.
                schema = constraint.definition if constraint.kind == "json_schema" else '{"type": "object"}'
                compiled = self.compiler.compile_json_schema(schema, any_whitespace=False)
            else:
                compiled = self.compiler.compile_structural_tag(constraint.definition)
        except (RuntimeError, ValueError, TypeError) as error:
            raise InvalidRequestError(
                f"cannot use the {constraint.kind} as a grammar: {reason(error)}"
            ) from None
        return xgrammar.GrammarMatcher(compiled)


def reason(error: Exception) -> str:
    """xgrammar's message without its source location ("[time] file.cc:line: ")."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first)


def mask_logits(logits: torch.Tensor, matchers: list[xgrammar.GrammarMatcher | None]) -> torch.Tensor:
    """`logits` ([B, vocab], float32) with each constrained row's disallowed tokens at -inf;
    rows without a matcher (or whose grammar has ended) are left as they are."""
    rows = [
        row for row, matcher in enumerate(matchers) if matcher is not None and not matcher.is_terminated()
    ]
    if not rows:
        return logits
    import xgrammar

    bitmask = xgrammar.allocate_token_bitmask(len(matchers), logits.shape[-1])
    for row in rows:
        matcher = matchers[row]
        assert matcher is not None
        matcher.fill_next_token_bitmask(bitmask, row)
    masked = logits.float().clone()  # the model's own tensor may be reused by a graph replay
    # xgrammar picks the kernel by device: its C++ loop on CPUs, a Triton kernel on GPUs.
    xgrammar.apply_token_bitmask_inplace(masked, bitmask.to(masked.device), indices=rows)
    allows_nothing = torch.isinf(masked[rows]).all(-1).tolist()  # one host sync for the batch
    for row, dead in zip(rows, allows_nothing, strict=True):
        if dead:  # a grammar that allows nothing (`oneOf: []`): end the answer
            matcher = matchers[row]
            assert matcher is not None
            masked[row] = float("-inf")
            masked[row, list(matcher.stop_token_ids) or [0]] = 0.0
    return masked
