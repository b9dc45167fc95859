"""`tandem models`: the catalog of models Tandem knows by a short id, and which are here."""

from __future__ import annotations

import argparse

from tandem.store.cache import format_bytes

SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8": "fp8"}
COLUMNS = ("ID", "PARAMETERS", "LAYERS", "CONTEXT", "WEIGHTS", "ENGINE", "HERE", "HUGGING FACE REPO")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this model_type (llama, qwen2, qwen3, mistral, ...)")


def format_parameters(total: int, active: int) -> str:
    text = f"{total / 1e9:.1f}B" if total < 1e12 else f"{total / 1e12:.2f}T"
    return text if active == total else f"{text} ({active / 1e9:.1f}B active)"


def run(args: argparse.Namespace) -> int:
    from tandem.store.catalog import catalog
    from tandem.store.resolve import local_status

    rows: list[tuple[str, ...]] = [COLUMNS]
    for card in catalog():
        if args.family and card.family != args.family:
            continue
        here = {"complete": "yes", "partial": "part", "absent": ""}[local_status(card.repo)]
        rows.append(
            (
                card.id,
                format_parameters(card.parameters, card.active_parameters),
                str(card.layers),
                f"{card.context // 1024}K",
                f"{format_bytes(card.download_bytes)} {SHORT_DTYPES.get(card.checkpoint_dtype, card.checkpoint_dtype)}",
                card.engine,
                here,
                card.repo + (" (gated)" if card.gated else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(
        "\nENGINE: 'runs' today; 'plans' = placement plans it (tandem place), the engine does not run it yet."
        "\nAny Hugging Face repo id or checkpoint directory works as a model name too."
    )
    return 0
