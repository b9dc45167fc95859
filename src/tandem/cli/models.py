"""`tandem models`: the catalog of models Tandem knows by a short id, and which are here."""

from __future__ import annotations

import argparse

from tandem.sizes import format_bytes

SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8": "fp8"}
COLUMNS = ("ID", "PARAMETERS", "LAYERS", "CONTEXT", "WEIGHTS", "ENGINE", "HERE", "HUGGING FACE REPO")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this model_type (llama, qwen2, qwen3, mistral, ...)")


def format_parameters(total: int, active: int) -> str:
    if total < 1e9:
        text = f"{total / 1e6:.1f}M"
    else:
        text = f"{total / 1e9:.1f}B" if total < 1e12 else f"{total / 1e12:.2f}T"
    return text if active == total else f"{text} ({active / 1e9:.1f}B active)"


def demo_row() -> tuple[str, ...]:
    """The bundled demo model, first: it is always here and runs offline."""
    from tandem.model.config import load_model_config
    from tandem.store.resolve import DEMO_MODEL_DIR, DEMO_MODEL_NAME

    config = load_model_config(DEMO_MODEL_DIR)
    weights = sum(path.stat().st_size for path in DEMO_MODEL_DIR.glob("*.safetensors"))
    dtype = SHORT_DTYPES.get(config.checkpoint_dtype, config.checkpoint_dtype)
    return (
        DEMO_MODEL_NAME,
        format_parameters(config.total_parameter_count(), config.total_parameter_count()),
        str(config.num_layers),
        f"{config.max_position_embeddings // 1024}K"
        if config.max_position_embeddings >= 1024
        else str(config.max_position_embeddings),
        f"{format_bytes(weights)} {dtype}",
        "runs",
        "yes",
        "(bundled with Tandem)",
    )


def run(args: argparse.Namespace) -> int:
    from tandem.store.catalog import catalog
    from tandem.store.resolve import local_status

    rows: list[tuple[str, ...]] = [COLUMNS]
    if args.family in (None, "llama"):
        rows.append(demo_row())
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
