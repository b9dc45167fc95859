"""How an embedding checkpoint turns hidden states into one vector: the pooling and normalisation
its sentence-transformers files declare (`modules.json`, then the Pooling module's
`config.json`), as Qwen3-Embedding, GTE and E5 checkpoints ship them. Pure Python.

    modules.json            [{"type": "sentence_transformers.models.Transformer", "path": ""},
                             {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
                             {"type": "sentence_transformers.models.Normalize", "path": "2_Normalize"}]
    1_Pooling/config.json   {"pooling_mode_lasttoken": true, ...} (or _mean_tokens, _cls_token)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tandem.errors import ModelFormatError

PoolingMode = Literal["last", "mean", "cls"]
MODE_KEYS: dict[str, PoolingMode] = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}


@dataclass(frozen=True)
class Pooling:
    """One embedding per input: `mode` over the final hidden states (after the final norm), then
    scaled to unit length when `normalize`."""

    mode: PoolingMode
    normalize: bool


def read_pooling(directory: str | Path) -> Pooling | None:
    """The checkpoint's pooling, or None when it declares none (not an embedding model)."""
    directory = Path(directory)
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ModelFormatError(
            f"{modules_file} is not a sentence-transformers module list: {error}"
        ) from None
    if "Pooling" not in kinds:
        return None
    pooling_file = directory / kinds["Pooling"] / "config.json"
    try:
        settings = json.loads(pooling_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"cannot read the pooling settings {pooling_file}: {error}") from None
    modes: list[PoolingMode] = [mode for key, mode in MODE_KEYS.items() if settings.get(key)]
    others = [k for k, v in settings.items() if k.startswith("pooling_mode_") and v and k not in MODE_KEYS]
    if len(modes) != 1 or others:
        declared = ", ".join(k for k, v in settings.items() if k.startswith("pooling_mode_") and v) or "none"
        raise ModelFormatError(
            f"{pooling_file}: Tandem pools by exactly one of last token, mean or CLS; it declares {declared}"
        )
    return Pooling(modes[0], normalize="Normalize" in kinds)
