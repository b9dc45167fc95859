"""`GET /metrics`: the node's serving figures in Prometheus' text format (`prometheus-client`).

Each node counts the requests it took (whichever node runs their instance), labelled by instance,
model and this node; gauges are read from the live state at each scrape:

    tandem_requests_total{outcome}           finished requests: ok, failed, aborted (client left),
                                             rejected (the runner refused it: too long, bad settings),
                                             refused (429: the instance's queue is full)
    tandem_prompt_tokens_total               tokens in (as the runner counted the prompt)
    tandem_completion_tokens_total           tokens out
    tandem_time_to_first_token_seconds       from the request's admission to its first token
    tandem_inter_token_latency_seconds       between one token and the next of a request
    tandem_requests_in_flight                admitted here and not finished
    tandem_requests_waiting                  of those, still without a first token (queued at the
                                             runner for a free slot, or in prefill)
    tandem_kv_cache_slots                    the instance's sequences (KV-cache slots)
    tandem_kv_cache_bytes{rank, device}      the KV cache a runner allocated, as it reported
                                             (node: the runner's node)

A registry per app (not the process-wide default), so several nodes in one process stay apart.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as CounterMetric
from prometheus_client import Histogram as HistogramMetric
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tandem.cluster.state import ClusterState, Instance

router = APIRouter(tags=["Tandem"])

LABELS = ("instance", "model", "node")
# Seconds: from a small model on a GPU (a few ms) to a large one queued behind others (a minute).
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RequestTimer:
    """One request's figures, fed by its generation as its events arrive."""

    def __init__(self, metrics: ServingMetrics, instance: Instance) -> None:
        self.metrics = metrics
        self.labels = (instance.instance_id, instance.model, metrics.node_id)
        self.admitted_at = time.monotonic()
        self.last_token_at: float | None = None
        self.done = False
        self.is_waiting = True
        metrics.waiting[instance.instance_id] += 1

    def accepted(self, prompt_tokens: int) -> None:
        self.metrics.prompt_tokens.labels(*self.labels).inc(prompt_tokens)

    def token(self) -> None:
        now = time.monotonic()
        if self.last_token_at is None:
            self.metrics.first_token.labels(*self.labels).observe(now - self.admitted_at)
            self._stop_waiting()
        else:
            self.metrics.inter_token.labels(*self.labels).observe(now - self.last_token_at)
        self.last_token_at = now
        self.metrics.completion_tokens.labels(*self.labels).inc()

    def finished(self, outcome: str) -> None:
        """Count the request once (the first outcome given wins), however it ended."""
        if self.done:
            return
        self.done = True
        self._stop_waiting()
        self.metrics.requests.labels(*self.labels, outcome).inc()

    def _stop_waiting(self) -> None:
        if self.is_waiting:
            self.is_waiting = False
            waiting = self.metrics.waiting
            waiting[self.labels[0]] -= 1
            if waiting[self.labels[0]] <= 0:
                del waiting[self.labels[0]]


class ServingMetrics:
    """The counters and histograms of one node's API, and the gauges read at each scrape."""

    def __init__(self, node_id: str, state: Callable[[], ClusterState], in_flight: Counter[str]) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry()
        self.waiting: Counter[str] = Counter()
        self.requests = CounterMetric(
            "tandem_requests", "Requests finished at this node", (*LABELS, "outcome"), registry=self.registry
        )
        self.prompt_tokens = CounterMetric(
            "tandem_prompt_tokens", "Prompt tokens of the requests taken here", LABELS, registry=self.registry
        )
        self.completion_tokens = CounterMetric(
            "tandem_completion_tokens",
            "Tokens generated for the requests taken here",
            LABELS,
            registry=self.registry,
        )
        self.first_token = HistogramMetric(
            "tandem_time_to_first_token_seconds",
            "From a request's admission to its first token",
            LABELS,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = HistogramMetric(
            "tandem_inter_token_latency_seconds",
            "Between consecutive tokens of a request",
            LABELS,
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(LiveGauges(node_id, state, in_flight, self.waiting))

    def timer(self, instance: Instance) -> RequestTimer:
        return RequestTimer(self, instance)


class LiveGauges(Collector):
    """Gauges computed from the node's state at scrape time."""

    def __init__(
        self, node_id: str, state: Callable[[], ClusterState], in_flight: Counter[str], waiting: Counter[str]
    ) -> None:
        self.node_id = node_id
        self.state = state
        self.in_flight = in_flight
        self.waiting = waiting

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "tandem_requests_in_flight", "Requests admitted at this node and not finished", labels=LABELS
        )
        waiting = GaugeMetricFamily(
            "tandem_requests_waiting",
            "Requests in flight here without a first token yet (queued for a slot, or in prefill)",
            labels=LABELS,
        )
        slots = GaugeMetricFamily("tandem_kv_cache_slots", "The instance's KV-cache slots", labels=LABELS)
        kv_bytes = GaugeMetricFamily(
            "tandem_kv_cache_bytes",
            "The KV cache a runner allocated, as it reported",
            labels=(*LABELS, "rank", "device"),
        )
        for instance in self.state().instances:
            labels = [instance.instance_id, instance.model, self.node_id]
            in_flight.add_metric(labels, self.in_flight[instance.instance_id])
            waiting.add_metric(labels, self.waiting[instance.instance_id])
            slots.add_metric(labels, instance.num_slots)
            for runner in instance.runners:
                if runner.kv_cache_bytes is not None:
                    kv_bytes.add_metric(
                        [
                            instance.instance_id,
                            instance.model,
                            runner.node_id,
                            str(runner.rank),
                            runner.device,
                        ],
                        runner.kv_cache_bytes,
                    )
        yield from (in_flight, waiting, slots, kv_bytes)


@router.get(
    "/metrics",
    summary="Serving metrics in Prometheus' text format",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the metrics"}},
)
async def metrics(request: Request) -> Response:
    serving_metrics: ServingMetrics = request.app.state.serving.metrics
    return Response(generate_latest(serving_metrics.registry), media_type=CONTENT_TYPE_LATEST)
