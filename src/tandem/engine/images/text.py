"""The prompt's embeddings, once per request: CLIP's pooled output and T5's token sequence.

Both encoders and tokenizers are `transformers`' own, loaded from the checkpoint's
`text_encoder/`, `tokenizer/`, `text_encoder_2/` and `tokenizer_2/`; they are used as
FluxPipeline uses them (padded to full length, truncated past it, no attention mask), so the
embeddings are the same tensors.
"""

# diffusers and transformers export lazily and type their call signatures loosely for checkers.
# pyright: reportPrivateImportUsage=false, reportArgumentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tandem.errors import ModelFormatError


@dataclass(frozen=True)
class PromptEmbeddings:
    """One prompt, encoded: T5's sequence [1, T, joint_dim] and CLIP's pooled vector [1, P]."""

    sequence: torch.Tensor
    pooled: torch.Tensor

    def repeated(self, images: int) -> PromptEmbeddings:
        """The same embeddings for each of `images` images of one batch."""
        return PromptEmbeddings(self.sequence.repeat(images, 1, 1), self.pooled.repeat(images, 1))


class PromptEncoder:
    """CLIP and T5 on one device. `clip_max_length` comes from CLIP's tokenizer, and
    `max_sequence_length` (T5 tokens) from the model (512 for dev, 256 for schnell)."""

    def __init__(
        self, model_dir: str | Path, device: torch.device, dtype: torch.dtype, max_sequence_length: int
    ):
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        root = Path(model_dir)
        try:
            self.clip_tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            self.t5_tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer_2")
            self.clip = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=dtype).to(device).eval()
            self.t5 = T5EncoderModel.from_pretrained(root / "text_encoder_2", dtype=dtype).to(device).eval()
        except (OSError, ValueError) as error:
            raise ModelFormatError(f"cannot load the text encoders of {root}: {error}") from None
        self.device, self.dtype = device, dtype
        self.clip_max_length = int(self.clip_tokenizer.model_max_length)
        self.max_sequence_length = max_sequence_length

    def _ids(self, tokenizer, prompt: str, length: int) -> torch.Tensor:
        return tokenizer(
            [prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    @torch.inference_mode()
    def encode(self, prompt: str) -> PromptEmbeddings:
        pooled = self.clip(self._ids(self.clip_tokenizer, prompt, self.clip_max_length)).pooler_output
        sequence = self.t5(self._ids(self.t5_tokenizer, prompt, self.max_sequence_length))[0]
        return PromptEmbeddings(sequence=sequence.to(self.dtype), pooled=pooled.to(self.dtype))
