"""Signed HTTP between nodes: every control request and every reply carries the cluster secret's
signature (`tandem.cluster.auth`), so a node of another cluster can neither command nor mislead.
Bodies are the typed messages of `tandem.protocol.control`, through the protocol's codec.

Each request names the node it is meant for (`to`) and carries a fresh nonce; the reply must be
signed with that nonce and name this node, or it is not taken as the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx

from tandem.cluster.auth import ANY_NODE, NONCE_HEADER, AuthError, loggable, sign_request, verify_request
from tandem.errors import PeerUnreachable
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.control import Done, Refusal

T = TypeVar("T")
REPLY_METHOD = "REPLY"  # replies are signed over this pseudo-method, so a request can't pass as one
CONTROL_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class SignatureRefused(PeerUnreachable):
    """The peer refused our signature (HTTP 401): most likely it holds another cluster secret."""


class ControlClient:
    def __init__(self, node_id: str, secret: bytes) -> None:
        self.node_id = node_id
        self.secret = secret
        self.http = httpx.AsyncClient(timeout=CONTROL_TIMEOUT)

    async def close(self) -> None:
        await self.http.aclose()

    def _request_headers(self, method: str, path: str, body: bytes, to: str) -> dict[str, str]:
        headers = sign_request(self.secret, self.node_id, method, path, body, target=to)
        headers["Content-Type"] = "application/json"
        return headers

    def check_reply(self, address: str, path: str, response: httpx.Response, nonce: str) -> None:
        """Raise PeerUnreachable unless `response` is the peer's signed answer to our request."""
        if response.status_code == 401:
            raise SignatureRefused(
                f"{address} refused our signature on {path}: {loggable(refusal_text(response.content), 200)} "
                "(is it a node of another cluster, with another secret?)"
            )
        try:
            reply = verify_request(self.secret, REPLY_METHOD, path, response.content, response.headers)
        except AuthError as error:
            raise PeerUnreachable(f"{address} sent an unsigned or badly signed reply: {error}") from None
        if reply.nonce != nonce or reply.target != self.node_id:
            raise PeerUnreachable(f"{address} sent a reply signed for another request (a replayed reply)")

    async def call(
        self,
        address: str,
        method: str,
        path: str,
        message: Any = None,
        reply: type[T] | Any = Done,
        timeout: float | None = None,
        to: str = ANY_NODE,
    ) -> T:
        """Send a signed request meant for node `to` at `address` (host:port) and return its
        verified, decoded reply. `to` is `ANY_NODE` only where the node is not known yet."""
        body = b"" if message is None else codec.encode(message)
        headers = self._request_headers(method, path, body, to)
        try:
            response = await self.http.request(
                method,
                f"http://{address}{path}",
                content=body,
                headers=headers,
                timeout=CONTROL_TIMEOUT if timeout is None else timeout,
            )
        except httpx.HTTPError as error:
            raise PeerUnreachable(f"{address} did not answer {path}: {type(error).__name__}") from None
        self.check_reply(address, path, response, headers[NONCE_HEADER])
        if response.status_code >= 400:
            raise PeerUnreachable(f"{address} refused {path}: {refusal_text(response.content)}")
        try:
            return codec.decode(reply, response.content)
        except ProtocolError as error:
            raise PeerUnreachable(f"{address} answered {path} with a malformed reply: {error}") from None

    async def stream(
        self, address: str, path: str, message: Any, item: type[T] | Any, to: str
    ) -> AsyncIterator[T]:
        """POST a signed request to node `to` and yield the decoded JSON lines of a streamed reply."""
        body = codec.encode(message)
        request = self.http.build_request(
            "POST",
            f"http://{address}{path}",
            content=body,
            headers=self._request_headers("POST", path, body, to),
            timeout=httpx.Timeout(None, connect=3.0),
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as error:
            raise PeerUnreachable(f"{address} did not answer {path}: {type(error).__name__}") from None
        try:
            if response.status_code >= 400:
                await response.aread()
                self.check_reply(address, path, response, request.headers[NONCE_HEADER])
                raise PeerUnreachable(f"{address} refused {path}: {refusal_text(response.content)}")
            async for line in response.aiter_lines():
                if line.strip():
                    try:
                        yield codec.decode(item, line)
                    except ProtocolError as error:
                        raise PeerUnreachable(f"the stream from {address} carried {error}") from None
        except httpx.HTTPError as error:
            raise PeerUnreachable(f"the stream from {address} broke: {type(error).__name__}") from None
        finally:
            await response.aclose()


def refusal_text(content: bytes) -> str:
    """The reason of an error reply (a Refusal), or the start of whatever it was."""
    try:
        return codec.decode(Refusal, content).error
    except ProtocolError:
        return content[:200].decode(errors="replace")


def sign_reply(
    secret: bytes, node_id: str, path: str, body: bytes, requester: str, nonce: str
) -> dict[str, str]:
    """The headers of a reply to `requester`'s request that carried `nonce`."""
    return sign_request(secret, node_id, REPLY_METHOD, path, body, target=requester, nonce=nonce)
