"""The cluster secret: generating it, deriving the cluster id, and signing what nodes say.

Pure functions over bytes and strings: no I/O, no clock reads unless `now` is left out, no web
framework. Every signed message starts with its own domain tag ("tandem-request-v2", ...), so a
signature made for one purpose can never be replayed as another.

A control message names its sender, its target node (or `ANY_NODE` where the sender cannot know
it yet: a heartbeat to an address) and a fresh nonce; the receiver checks the target itself and
keeps the nonces of the replay window (`tandem.cluster.replay`). A reply is signed with the
request's nonce and names the requester, so a recorded reply cannot answer another request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tandem.errors import TandemError

SECRET_MIN_LENGTH = 16  # characters; shorter secrets fall to an offline guess from one sniffed packet
MAX_CLOCK_SKEW = 60.0  # seconds a signed timestamp may differ from ours; limits replays

NODE_HEADER = "X-Tandem-Node"
TIME_HEADER = "X-Tandem-Time"
SIGNATURE_HEADER = "X-Tandem-Signature"
TARGET_HEADER = "X-Tandem-Target"
NONCE_HEADER = "X-Tandem-Nonce"
ANY_NODE = "*"  # the target of a message sent to an address whose node is not known yet

_CLUSTER_ID_TAG = b"tandem-cluster-id-v1"
_RENDEZVOUS_TAG = b"tandem-rendezvous-token-v1"
_REQUEST_TAG = "tandem-request-v2"
_NONCE_CHARACTERS = frozenset("0123456789abcdef")
NONCE_LENGTH = 32  # hex digits: 128 random bits


class AuthError(TandemError):
    """A message that does not carry a valid signature of this cluster; the text says why."""


@dataclass(frozen=True)
class SignedRequest:
    """What a verified signature vouches for: who sent it, to whom, when, under which nonce."""

    sender: str
    target: str
    nonce: str
    timestamp: int


def new_nonce() -> str:
    """A fresh random nonce for one control message."""
    return secrets.token_hex(NONCE_LENGTH // 2)


def generate_secret() -> bytes:
    """A new random cluster secret: 256 bits as URL-safe text, so it can be printed and copied."""
    return secrets.token_urlsafe(32).encode("ascii")


def parse_secret(text: str, source: str = "the cluster secret") -> bytes:
    """The secret bytes for `text` (from --secret, TANDEM_SECRET or the secret file).

    Surrounding whitespace is dropped (files end in a newline). `source` names where the text
    came from in the error message.
    """
    stripped = text.strip()
    if len(stripped) < SECRET_MIN_LENGTH:
        raise TandemError(
            f"{source} is too short ({len(stripped)} characters); use at least {SECRET_MIN_LENGTH}, "
            "for example the one Tandem writes to its secret file on first start"
        )
    return stripped.encode("utf-8")


def cluster_id(secret: bytes) -> str:
    """A short public name of the cluster (16 hex digits), derived from the secret.

    Announced in clear so nodes of other clusters are ignored without checking signatures. It
    reveals nothing about the secret beyond what any signature already does.
    """
    return hmac.new(secret, _CLUSTER_ID_TAG, hashlib.sha256).hexdigest()[:16]


def rendezvous_token(secret: bytes, instance_id: str) -> str:
    """The token that admits a runner to its instance's rendezvous (`tandem.runner.rendezvous`):
    every node derives the same one, so it never needs to cross the network."""
    return hmac.new(secret, _RENDEZVOUS_TAG + b"\n" + instance_id.encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, message: bytes) -> str:
    """HMAC-SHA256 of `message` keyed by the cluster secret, as 64 hex digits."""
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify(secret: bytes, message: bytes, signature: str) -> bool:
    """Whether `signature` is `sign(secret, message)`, compared in constant time."""
    # Bytes, not str: compare_digest refuses non-ASCII text, and a forged header may contain some.
    expected = sign(secret, message).encode("ascii")
    return hmac.compare_digest(expected, signature.strip().lower().encode("utf-8"))


def clock_skew_problem(timestamp: float, now: float, max_skew: float = MAX_CLOCK_SKEW) -> str | None:
    """Why a signed `timestamp` is unacceptable at `now`, or None when it is within `max_skew`."""
    offset = timestamp - now
    if abs(offset) <= max_skew:
        return None
    direction = "ahead of" if offset > 0 else "behind"
    return (
        f"its clock is {abs(offset):.0f} s {direction} this node's (more than {max_skew:.0f} s allowed); "
        "synchronize the clocks (NTP)"
    )


def request_message(
    method: str, path: str, body: bytes, node_id: str, timestamp: int, target: str, nonce: str
) -> bytes:
    """The bytes signed for one HTTP control message.

    `path` is the request target as sent: the path plus "?query" when there is one. The body is
    hashed first so the signed text stays small and unambiguous.
    """
    body_hash = hashlib.sha256(body).hexdigest()
    fields = (_REQUEST_TAG, method.upper(), path, node_id, target, nonce, str(timestamp), body_hash)
    return "\n".join(fields).encode("utf-8")


def sign_request(
    secret: bytes,
    node_id: str,
    method: str,
    path: str,
    body: bytes = b"",
    target: str = ANY_NODE,
    nonce: str | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that authenticate an HTTP control message from node `node_id` to `target`
    (a fresh nonce unless one is given: a reply carries its request's)."""
    timestamp = int(time.time() if now is None else now)
    nonce = new_nonce() if nonce is None else nonce
    message = request_message(method, path, body, node_id, timestamp, target, nonce)
    return {
        NODE_HEADER: node_id,
        TARGET_HEADER: target,
        NONCE_HEADER: nonce,
        TIME_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, message),
    }


def verify_request(
    secret: bytes,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float | None = None,
    max_skew: float = MAX_CLOCK_SKEW,
) -> SignedRequest:
    """Who sent the message and to whom, once the headers prove the sender holds the secret.

    Raises AuthError with a one-line reason for a missing header, a malformed nonce, a timestamp
    more than `max_skew` seconds off (an old message replayed, or a wrong clock), or a bad
    signature (another cluster's secret, or a message altered on the way). `headers` may be any
    mapping; names are matched without regard to case. The target and the nonce's freshness are
    the receiver's to check (`check_target`, `ReplayWindow`).
    """
    node_id = _header(headers, NODE_HEADER)
    target = _header(headers, TARGET_HEADER)
    nonce = _header(headers, NONCE_HEADER)
    time_text = _header(headers, TIME_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    try:
        timestamp = int(time_text)
    except ValueError:
        raise AuthError(f"{TIME_HEADER} is not a whole number of seconds: {time_text[:40]!r}") from None
    if len(nonce) != NONCE_LENGTH or not set(nonce) <= _NONCE_CHARACTERS:
        raise AuthError(f"{NONCE_HEADER} is not {NONCE_LENGTH} lowercase hex digits: {loggable(nonce, 40)!r}")
    problem = clock_skew_problem(timestamp, time.time() if now is None else now, max_skew)
    if problem:
        raise AuthError(f"stale or future request from node {loggable(node_id)}: {problem}")
    message = request_message(method, path, body, node_id, timestamp, target, nonce)
    if not verify(secret, message, signature):
        raise AuthError(
            f"bad signature on a request from node {loggable(node_id)}: "
            "different cluster secret or altered request"
        )
    return SignedRequest(node_id, target, nonce, timestamp)


def check_target(signed: SignedRequest, own_id: str, any_allowed: bool) -> None:
    """Refuse a message meant for another node; `ANY_NODE` passes only where `any_allowed`
    (a heartbeat or a read, sent to an address before its node is known)."""
    if signed.target == own_id or (any_allowed and signed.target == ANY_NODE):
        return
    if signed.target == ANY_NODE:
        raise AuthError(f"a message from node {loggable(signed.sender)} names no target node; this one must")
    raise AuthError(
        f"a message from node {loggable(signed.sender)} is meant for node {loggable(signed.target)}, "
        f"not this one ({own_id})"
    )


def loggable(text: str, limit: int = 64) -> str:
    """`text` from the network made safe for a one-line log: printable characters, at most `limit`."""
    kept = "".join(character for character in text if character.isprintable())
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if not value:
        raise AuthError(f"missing {name} header: not signed with a cluster secret")
    return value
