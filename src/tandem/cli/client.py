"""Talking to a running node from the command line (`tandem run`, `tandem place --dry-run`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import httpx

from tandem import settings
from tandem.errors import TandemError
from tandem.node.options import DEFAULT_PORT

DEFAULT_NODE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def add_node_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node", default=DEFAULT_NODE_URL, help=f"the node to talk to (default {DEFAULT_NODE_URL})"
    )


class NodeClient:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        key = settings.api_key()  # a node started with an API key wants it on /v1/* too
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(600.0, connect=5.0),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except (json.JSONDecodeError, AttributeError):
                message = response.text
            raise TandemError(str(message))
        return response.json()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return self._check(self.http.request(method, path, json=body))
        except httpx.ConnectError:
            raise TandemError(f"no node answers at {self.url}; start one with `tandem`") from None
        except httpx.HTTPError as error:
            raise TandemError(f"talking to {self.url} failed: {type(error).__name__}") from None

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        try:
            with self.http.stream(
                "POST", path, json=body, timeout=httpx.Timeout(None, connect=5.0)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.ConnectError:
            raise TandemError(f"no node answers at {self.url}; start one with `tandem`") from None
        except httpx.HTTPError as error:
            raise TandemError(f"the stream from {self.url} broke: {type(error).__name__}") from None
