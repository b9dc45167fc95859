"""How many API requests an instance has in flight at this node, and the cap on them.

Each node admits up to `requests_per_slot` × the instance's KV-cache slots at once; the runner
queues what exceeds its slots, and the node refuses what exceeds the cap with 429 and
Retry-After, so a flood of clients meets a clear answer instead of an ever-longer queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tandem.api.errors import APIError
from tandem.cluster.state import Instance

RETRY_AFTER_SECONDS = 1


class InFlightLimits:
    def __init__(self, requests_per_slot: int) -> None:
        self.requests_per_slot = requests_per_slot
        self.in_flight: Counter[str] = Counter()

    def limit(self, instance: Instance) -> int:
        return self.requests_per_slot * max(instance.num_slots, 1)

    def load(self, instance: Instance) -> float:
        """In-flight requests per slot: the least loaded instance of a model takes the next one."""
        return self.in_flight[instance.instance_id] / max(instance.num_slots, 1)

    def admit(self, instance: Instance) -> Callable[[], None]:
        """Count one request in; returns the function that counts it out (call it exactly once)."""
        instance_id = instance.instance_id
        if self.in_flight[instance_id] >= self.limit(instance):
            raise APIError(
                429,
                f"instance {instance_id} ({instance.model}) has {self.in_flight[instance_id]} requests "
                f"in flight, its limit at this node; retry shortly",
                code="rate_limit_exceeded",
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.in_flight[instance_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[instance_id] -= 1
                if self.in_flight[instance_id] <= 0:
                    del self.in_flight[instance_id]

        return release
