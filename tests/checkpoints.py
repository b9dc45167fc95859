"""Tiny random checkpoints in Hugging Face format, built with `transformers` (test-only).

Weights are drawn wide enough (and norms and biases perturbed) that the logits are well
separated: greedy decoding then compares implementations, not rounding noise between near ties.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

COMMON = dict(
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

# name -> (transformers model_type, config overrides). Covers every feature the engine claims.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa": ("llama", {}),
    "llama-mha-tied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-rope": (
        "llama",
        dict(
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
            rope_theta=500000.0,
            num_key_value_heads=1,
        ),
    ),
    "mistral-window": ("mistral", dict(sliding_window=8, head_dim=24)),
    "qwen2-bias": ("qwen2", {}),
    "qwen2.5-tied": ("qwen2", dict(tie_word_embeddings=True, num_attention_heads=8, num_key_value_heads=2)),
    "qwen3-qknorm": ("qwen3", dict(head_dim=32)),
}


TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Shall I compare thee to a summer's day?",
    "Thou art more lovely and more temperate: rough winds do shake the darling buds of May.",
    "Ünïcödé façade, naïve café; 日本語 🎉",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer of exactly `vocab_size` entries, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TOKENIZER_CORPUS, trainer)
    assert tokenizer.get_vocab_size() <= vocab_size
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|endoftext|>",
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )


@dataclass
class TinyCheckpoint:
    name: str
    path: Path
    model: Any  # the transformers reference model, float32, eval mode
    config: dict[str, Any]


def _config_and_model(model_type: str, overrides: dict[str, Any]):
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }
    config_class, model_class = classes[model_type]
    return model_class(config_class(**{**COMMON, **overrides}))


def randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.2 * noise)
            else:
                fan_in = parameter.shape[-1] if parameter.dim() > 1 else 1
                parameter.copy_(noise * (1.5 / fan_in**0.5 if "embed" not in name else 1.0))


def build_checkpoint(
    directory: Path, family: str, seed: int = 0, max_shard_size: str | None = None, **overrides: Any
) -> TinyCheckpoint:
    model_type, family_overrides = FAMILIES[family]
    torch.manual_seed(seed)
    model = _config_and_model(model_type, {**family_overrides, **overrides})
    randomize(model, seed)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    write_tokenizer(directory, model.config.vocab_size)
    config = json.loads((directory / "config.json").read_text())
    return TinyCheckpoint(family, directory, model, config)
