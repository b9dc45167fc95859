"""Train the demo model (a small Llama) on the data `prepare.py` wrote, and save it in Hugging Face
format, ready for `src/tandem/demo_model/`.

Uses `transformers`' LlamaForCausalLM, the reference implementation, so the result is a plain
Hugging Face checkpoint. Runs on CUDA in a couple of minutes (CPU works, slowly).

    python tools/demo_model/train.py --data build/demo-data --out build/demo-model
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)
CHAT_SHARE = 0.4  # fraction of each batch drawn from the chat-formatted dialogue


def load_stream(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))
    split = int(len(ids) * 0.98)
    return ids[:split], ids[split:]


def batch_from(stream: torch.Tensor, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - length - 1, (count,), generator=generator)
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


def mixed_batch(plain, chat, size, length, generator):
    chat_rows = int(size * CHAT_SHARE)
    return torch.cat(
        [
            batch_from(plain, size - chat_rows, length, generator),
            batch_from(chat, chat_rows, length, generator),
        ]
    )


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def loss_of(model, batch, device):
    batch = batch.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    plain_train, plain_val = load_stream(args.data / "plain.bin")
    chat_train, chat_val = load_stream(args.data / "chat.bin")
    tokenizer = json.loads((args.data / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    eos = [specials["<|endoftext|>"], specials["<|end|>"]]
    config = LlamaConfig(
        vocab_size=4096, bos_token_id=None, eos_token_id=eos, pad_token_id=None, **MODEL_SHAPE
    )
    model = LlamaForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    val_batch = mixed_batch(plain_val, chat_val, 32, args.length, torch.Generator().manual_seed(1))
    started = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=100)
        loss = loss_of(
            model, mixed_batch(plain_train, chat_train, args.batch, args.length, generator), device
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 250 == 0 or step == args.steps - 1:
            with torch.no_grad():
                val = loss_of(model, val_batch, device)
            print(
                f"step {step:5d}  train {loss.item():.3f}  validation {val.item():.3f}  "
                f"{time.time() - started:.0f}s",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    GenerationConfig(eos_token_id=eos, do_sample=True, temperature=0.7, top_p=0.95).save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(args.data / name, args.out / name)
    summary = dict(
        parameters=params,
        steps=args.steps,
        batch=args.batch,
        length=args.length,
        lr=args.lr,
        seed=args.seed,
        final_validation_loss=round(val.item(), 3),
        seconds=round(time.time() - started),
        device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
    )
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
