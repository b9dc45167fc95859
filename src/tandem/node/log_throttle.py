"""Warnings that could repeat every second (a stranger's node knocking with another secret) are
logged once a minute per key, so the log stays readable and cannot be flooded."""

from __future__ import annotations

WARNING_INTERVAL = 60.0  # seconds between two warnings with the same key
MAX_KEYS = 1024  # forgotten all at once past this: a flood of keys costs a few repeated lines


class LogThrottle:
    """Whether a warning with a given key is due at `now` (a monotonic clock's seconds)."""

    def __init__(self, interval: float = WARNING_INTERVAL, max_keys: int = MAX_KEYS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        return True
