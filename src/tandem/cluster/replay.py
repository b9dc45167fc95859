"""The nonces of signed control messages seen within the replay window.

A signed message is accepted only while its timestamp is within `MAX_CLOCK_SKEW` of the
receiver's clock, so a nonce needs remembering only until then; older ones are forgotten. The
window holds at most `capacity` nonces: past that, messages are refused rather than forgotten
early, so a flood can slow the cluster down but never reopen a replay.
"""

from __future__ import annotations

import heapq

from tandem.cluster.auth import MAX_CLOCK_SKEW, AuthError, SignedRequest, loggable

DEFAULT_CAPACITY = 200_000  # a 100-node cluster sends ~100 heartbeats a second: 12,000 in 2 minutes


class ReplayWindow:
    """Remembers nonces until their messages' timestamps expire; refuses any nonce seen twice."""

    def __init__(self, max_skew: float = MAX_CLOCK_SKEW, capacity: int = DEFAULT_CAPACITY) -> None:
        self.max_skew = max_skew
        self.capacity = capacity
        self._expiry: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def admit(self, signed: SignedRequest, now: float) -> None:
        """Record `signed`'s nonce, or raise AuthError when it was seen (a replay) or the window is full."""
        self._forget_expired(now)
        if signed.nonce in self._expiry:
            raise AuthError(
                f"replayed message from node {loggable(signed.sender)}: nonce {signed.nonce[:8]}… seen already"
            )
        if len(self._expiry) >= self.capacity:
            raise AuthError(
                f"too many control messages in the last {2 * self.max_skew:.0f} s "
                f"({self.capacity}); refused until older ones expire"
            )
        expiry = signed.timestamp + self.max_skew + 1  # the timestamp check refuses it after this
        self._expiry[signed.nonce] = expiry
        heapq.heappush(self._by_expiry, (expiry, signed.nonce))

    def _forget_expired(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            _, nonce = heapq.heappop(self._by_expiry)
            del self._expiry[nonce]
