"""Which models the cluster serves: GET /v1/models (OpenAI's format, or Anthropic's when the
client sends `anthropic-version`), GET /v1/models/{model}, and GET /v1/placements (every model
the cluster can launch by name, with whether it fits now and where it would go)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tandem.api.catalog import servable_model_names
from tandem.api.errors import APIError
from tandem.api.openai_schemas import ModelCard, ModelList
from tandem.api.serving import serving_of
from tandem.cluster.placement import Infeasible
from tandem.errors import TandemError
from tandem.protocol import codec
from tandem.protocol.control import LaunchRequest

router = APIRouter()


class ModelFit(BaseModel):
    model: str
    fits: bool = Field(description="whether a new instance would fit the cluster now")
    instances: list[str] = Field(description="ids of the instances running it now")
    reason: str | None = Field(None, description="why it does not fit, in numbers")
    explain: list[str] | None = Field(None, description="the placement, one line per stage")
    placement: dict[str, Any] | None = None


def created_at(request: Request) -> int:
    return int(serving_of(request).cluster.started_at)


def openai_card(name: str, instance_ids: list[str], created: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "tandem",
        "instances": instance_ids,
    }


def anthropic_card(name: str, created: int) -> dict[str, Any]:
    when = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": name, "display_name": name, "created_at": when}


@router.get(
    "/v1/models",
    tags=["OpenAI", "Anthropic"],
    summary="Models running or launchable by name (Anthropic's format with an anthropic-version header)",
    response_model=ModelList,
)
async def list_models(request: Request) -> Any:
    names = serving_of(request).known_models()
    created = created_at(request)
    if "anthropic-version" in request.headers:
        cards = [anthropic_card(name, created) for name in names]
        return JSONResponse(
            {
                "data": cards,
                "has_more": False,
                "first_id": cards[0]["id"] if cards else None,
                "last_id": cards[-1]["id"] if cards else None,
            }
        )
    return {"object": "list", "data": [openai_card(name, ids, created) for name, ids in names.items()]}


@router.get(
    "/v1/models/{model:path}",
    tags=["OpenAI", "Anthropic"],
    summary="One model, by name or instance id",
    response_model=ModelCard,
)
async def retrieve_model(model: str, request: Request) -> Any:
    names = serving_of(request).known_models()
    found = next((n for n, ids in names.items() if model == n or model in ids), None)
    if found is None:
        raise APIError(
            404, f"model {model!r} is not running and cannot be launched by name", code="model_not_found"
        )
    if "anthropic-version" in request.headers:
        return JSONResponse(anthropic_card(found, created_at(request)))
    return openai_card(found, names[found], created_at(request))


@router.get(
    "/v1/placements",
    tags=["Cluster"],
    summary="Every model the cluster can launch by name, whether it fits now, and where it would go",
    response_model=list[ModelFit],
)
async def model_fits(request: Request) -> Any:
    serving = serving_of(request)
    running = serving.known_models()
    fits = []
    for name in servable_model_names():
        fit: dict[str, Any] = {"model": name, "instances": running.get(name, [])}
        try:
            placement = await asyncio.to_thread(serving.cluster.plan, LaunchRequest(name))
        except TandemError as error:
            fits.append({**fit, "fits": False, "reason": str(error)})
            continue
        if isinstance(placement, Infeasible):
            fits.append({**fit, "fits": False, "reason": placement.reason})
        else:
            fits.append(
                {**fit, "fits": True, "explain": placement.explain(), "placement": codec.to_json(placement)}
            )
    return fits
