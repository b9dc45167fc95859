"""Signed HTTP between nodes: every control request and every reply carries the cluster secret's
signature (`tandem.cluster.auth`), so a node of another cluster can neither command nor mislead.
Bodies are the typed messages of `tandem.protocol.control`, through the protocol's codec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx

from tandem.cluster.auth import AuthError, sign_request, verify_request
from tandem.errors import PeerUnreachable
from tandem.protocol import codec
from tandem.protocol.codec import ProtocolError
from tandem.protocol.control import Done, Refusal

T = TypeVar("T")
REPLY_METHOD = "REPLY"  # replies are signed over this pseudo-method, so a request can't pass as one
CONTROL_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class ControlClient:
    def __init__(self, node_id: str, secret: bytes) -> None:
        self.node_id = node_id
        self.secret = secret
        self.http = httpx.AsyncClient(timeout=CONTROL_TIMEOUT)

    async def close(self) -> None:
        await self.http.aclose()

    def _request_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        headers = sign_request(self.secret, self.node_id, method, path, body)
        headers["Content-Type"] = "application/json"
        return headers

    async def call(
        self,
        address: str,
        method: str,
        path: str,
        message: Any = None,
        reply: type[T] | Any = Done,
        timeout: float | None = None,
    ) -> T:
        """Send a signed request to `address` (host:port) and return its verified, decoded reply."""
        body = b"" if message is None else codec.encode(message)
        try:
            response = await self.http.request(
                method,
                f"http://{address}{path}",
                content=body,
                headers=self._request_headers(method, path, body),
                timeout=CONTROL_TIMEOUT if timeout is None else timeout,
            )
        except httpx.HTTPError as error:
            raise PeerUnreachable(f"{address} did not answer {path}: {type(error).__name__}") from None
        try:
            verify_request(self.secret, REPLY_METHOD, path, response.content, response.headers)
        except AuthError as error:
            raise PeerUnreachable(f"{address} sent an unsigned or badly signed reply: {error}") from None
        if response.status_code >= 400:
            raise PeerUnreachable(f"{address} refused {path}: {refusal_text(response.content)}")
        try:
            return codec.decode(reply, response.content)
        except ProtocolError as error:
            raise PeerUnreachable(f"{address} answered {path} with a malformed reply: {error}") from None

    async def stream(self, address: str, path: str, message: Any, item: type[T] | Any) -> AsyncIterator[T]:
        """POST a signed request and yield the decoded JSON lines of a streamed reply."""
        body = codec.encode(message)
        request = self.http.build_request(
            "POST",
            f"http://{address}{path}",
            content=body,
            headers=self._request_headers("POST", path, body),
            timeout=httpx.Timeout(None, connect=3.0),
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as error:
            raise PeerUnreachable(f"{address} did not answer {path}: {type(error).__name__}") from None
        try:
            if response.status_code >= 400:
                raise PeerUnreachable(f"{address} refused {path}: {refusal_text(await response.aread())}")
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


def sign_reply(secret: bytes, node_id: str, path: str, body: bytes) -> dict[str, str]:
    return sign_request(secret, node_id, REPLY_METHOD, path, body)
