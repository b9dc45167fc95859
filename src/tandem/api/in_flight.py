"""How many API requests each instance has in flight at this node: the least loaded instance of
a model takes the next request.

The cap on requests is the instance's own (its slots plus `--queue-limit` of the node running its
rank 0): its runner refuses a request that finds it full with `Busy`, which the API answers with 429
and Retry-After (`generation.py`), so the limit holds however many nodes take requests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tandem.cluster.state import Instance


class InFlightCounts:
    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()

    def load(self, instance: Instance) -> float:
        """In-flight requests per slot: the least loaded instance of a model takes the next one."""
        return self.in_flight[instance.instance_id] / max(instance.num_slots, 1)

    def count_in(self, instance: Instance) -> Callable[[], None]:
        """Count one request in; returns the function that counts it out (calling it again does
        nothing)."""
        instance_id = instance.instance_id
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
