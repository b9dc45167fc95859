"""Response bodies of the node's cluster routes (/v1/cluster, /v1/instances, /v1/placements), so
the OpenAPI document describes them; the values themselves are the cluster's dataclasses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.cluster.placement import Placement
from tandem.cluster.state import HistoryEntry, Instance
from tandem.cluster.topology import LinkInfo, NodeInfo


class Refusal(BaseModel):
    address: str = Field(description="the peer's host:port")
    message: str = Field(description="what it answered, and the likely cause")


class ClusterView(BaseModel):
    """The cluster state as this node sees it."""

    model_config = ConfigDict(populate_by_name=True)

    self_id: str = Field(alias="self", description="this node's id")
    version: int
    coordinator: str | None
    nodes: list[NodeInfo]
    links: list[LinkInfo]
    instances: list[Instance]
    history: list[HistoryEntry] = Field(
        default_factory=list, description="joins, leaves, failures and re-placements, oldest first"
    )
    refused_by: list[Refusal] = Field(
        default_factory=list,
        description="peers that refused this node's signature (another cluster secret, most likely)",
    )


class PlacementPreview(BaseModel):
    feasible: bool
    placement: Placement | None = None
    explain: list[str] | None = Field(None, description="the placement, one line per stage")
    reason: str | None = Field(None, description="why it does not fit, in numbers")


class StoppedInstance(BaseModel):
    stopped: str


class GenerateEvent(BaseModel):
    """One JSON line of /v1/instances/{id}/generate."""

    model_config = ConfigDict(extra="allow")

    event: Literal["accepted", "token", "rejected", "busy", "error", "finished"]
    request_id: str | None = None
    prompt_tokens: int | None = None
    token_id: int | None = None
    text: str | None = None
    logprob: float | None = None
    top_logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None
    message: str | None = None
