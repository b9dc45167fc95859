"""A tiny random FLUX.1 checkpoint in diffusers' layout, built offline by the tests.

Every part FluxPipeline loads is here: a FluxTransformer2DModel (with the guidance embedding for
the "dev" variant, without for "schnell"), a CLIP text model and tokenizer, a T5 encoder and
tokenizer, an AutoencoderKL, the flow-match scheduler's config and `model_index.json`. The
tokenizers are built from small vocabularies with the `tokenizers`-backed classes of
`transformers`, so nothing is downloaded.

The VAE has four blocks like FLUX's (a scale factor of 8, so sizes go by 16 pixels); the
transformer has two double-stream and three single-stream blocks, so splits into 2 and 3 stages
cut inside both kinds and at the boundary between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("dev", "schnell")
CLIP_MAX_LENGTH = 16  # tokenizer.model_max_length: FLUX's CLIP uses 77
T5_MAX_LENGTH = 24  # max_sequence_length for both pipelines: FLUX uses 512 (dev) or 256 (schnell)

WORDS = tuple(
    "a cat holding a sign that says hello world photo of an astronaut riding horse on the moon "  # noqa: SIM905
    "red blue green bright dark small large painting city night sky tree river mountain".split()
)

TRANSFORMER = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels × a 2×2 patch
    num_layers=2,
    num_single_layers=3,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,  # T5's d_model
    pooled_projection_dim=24,  # CLIP's hidden_size
    axes_dims_rope=(4, 6, 6),
)

SCHEDULERS = {
    "dev": dict(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    ),
    "schnell": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
}


@dataclass
class TinyFlux:
    variant: str
    path: Path
    pipeline: Any  # diffusers.FluxPipeline over the same weights, float32


def clip_tokenizer():
    """A CLIP BPE tokenizer over single bytes plus whole words of WORDS (end-of-word suffixed)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(WORDS)):
        # merge left to right: "c a" -> "ca", "ca t</w>" -> "cat</w>"
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)
    return tokenizer


def t5_tokenizer():
    """A T5 unigram tokenizer over the words of WORDS and single letters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in sorted(set(WORDS))]
    pieces += [(letter, -5.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_flux(directory: Path, variant: str, seed: int = 0, shard: bool = True) -> TinyFlux:
    """Write a tiny random FLUX.1 checkpoint to `directory` and return diffusers' pipeline on it.

    With `shard`, the transformer is saved in several safetensors files with an index."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TRANSFORMER["pooled_projection_dim"],
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=TRANSFORMER["joint_attention_dim"],
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    transformer = FluxTransformer2DModel(**TRANSFORMER, guidance_embeds=variant == "dev")
    _widen(transformer, seed)
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant]),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(directory, safe_serialization=True)
    if shard:
        for stale in (directory / "transformer").glob("*.safetensors"):
            stale.unlink()
        transformer.save_pretrained(directory / "transformer", max_shard_size="40KB", safe_serialization=True)
    # the reference reads the files as a user's FluxPipeline would (and is in eval mode, unlike
    # freshly built modules, whose dropout would be on)
    reference = FluxPipeline.from_pretrained(directory, dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    return TinyFlux(variant, directory, reference)


def _widen(transformer: torch.nn.Module, seed: int) -> None:
    """Random weights wide enough that every block changes the image (diffusers initializes
    some projections at zero-mean small scales, under which a tiny model is nearly the identity)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_added" in name:
                parameter.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.1 * noise)
            else:
                fan_in = parameter.shape[-1] if parameter.dim() > 1 else 1
                parameter.copy_(noise * (1.0 / fan_in**0.5))


def model_index(path: Path) -> dict[str, Any]:
    return json.loads((path / "model_index.json").read_text())
