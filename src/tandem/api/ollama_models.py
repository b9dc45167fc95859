"""Ollama-compatible model routes: GET /api/tags, GET /api/ps, POST /api/show, GET /api/version
(front ends such as Open WebUI call them to list and describe models)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from tandem.api.errors import APIError
from tandem.api.ollama_schemas import (
    OllamaRunning,
    OllamaShowRequest,
    OllamaShowResponse,
    OllamaTags,
    OllamaVersion,
)
from tandem.api.serving import serving_of, without_default_tag
from tandem.errors import TandemError
from tandem.model.config import ModelConfig, load_model_config
from tandem.model.tokenizer import Tokenizer
from tandem.store.resolve import resolve_model_dir

router = APIRouter(tags=["Ollama"])

# The Ollama API level these routes follow; clients compare it against their minimum.
OLLAMA_API_VERSION = "0.6.0"
QUANTIZATION_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def human_count(count: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def model_facts(name: str) -> tuple[Path | None, ModelConfig | None]:
    """The checkpoint directory and config behind a name, where this node can read them."""
    try:
        directory = resolve_model_dir(name)
        return directory, load_model_config(directory)
    except (TandemError, OSError):
        return None, None


def details(config: ModelConfig | None) -> dict[str, Any]:
    family = config.model_type if config else "unknown"
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": human_count(config.total_parameter_count()) if config else "",
        "quantization_level": QUANTIZATION_NAMES.get(config.checkpoint_dtype, "") if config else "",
    }


def entry(name: str) -> dict[str, Any]:
    directory, config = model_facts(name)
    files = list(directory.glob("*.safetensors")) if directory else []
    modified = max((f.stat().st_mtime for f in files), default=0.0)
    return {
        "name": name,
        "model": name,
        "modified_at": datetime.fromtimestamp(modified, UTC).isoformat().replace("+00:00", "Z"),
        "size": sum(f.stat().st_size for f in files),
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": details(config),
    }


@router.get(
    "/api/tags",
    summary="Models this cluster runs or can launch (Ollama-compatible)",
    response_model=OllamaTags,
)
async def tags(request: Request) -> Any:
    return {"models": [entry(name) for name in serving_of(request).known_models()]}


@router.get("/api/ps", summary="Models running now (Ollama-compatible)", response_model=OllamaRunning)
async def running(request: Request) -> Any:
    models = []
    for name, instance_ids in serving_of(request).known_models().items():
        if instance_ids:
            model = entry(name)
            models.append({**model, "expires_at": "9999-12-31T23:59:59Z", "size_vram": model["size"]})
    return {"models": models}


@router.post("/api/show", summary="Describe a model (Ollama-compatible)", response_model=OllamaShowResponse)
async def show(body: OllamaShowRequest, request: Request) -> Any:
    name = without_default_tag(body.model or body.name or "")
    known = serving_of(request).known_models()
    instance = next((i for i in serving_of(request).instances() if i.instance_id == name), None)
    name = instance.model if instance is not None else name
    if name not in known:
        raise APIError(404, f"model {name!r} not found")
    directory, config = model_facts(name)
    template = ""
    if directory is not None:
        try:
            template = Tokenizer(directory).chat_template or ""
        except TandemError:
            template = ""
    info: dict[str, Any] = {}
    if config is not None:
        arch = config.model_type
        info = {
            "general.architecture": arch,
            "general.parameter_count": config.total_parameter_count(),
            f"{arch}.context_length": config.max_position_embeddings,
            f"{arch}.embedding_length": config.hidden_size,
            f"{arch}.block_count": config.num_layers,
            f"{arch}.attention.head_count": config.num_attention_heads,
            f"{arch}.attention.head_count_kv": config.num_kv_heads,
        }
    return {
        "modelfile": "",
        "parameters": "",
        "template": template,
        "details": details(config),
        "model_info": info,
        "capabilities": ["completion"],
    }


@router.get("/api/version", summary="The Ollama API level served", response_model=OllamaVersion)
async def version() -> Any:
    return {"version": OLLAMA_API_VERSION}
