"""An instance's rendezvous, open only to the instance's ranks.

torch's TCPStore has no authentication, and its server listens on every interface. So rank 0
binds the real store to loopback (a socket bound here, handed over as `master_listen_fd`) and
puts a gate on the node's advertised address: a connection reaches the store only after it
answers a random challenge with the HMAC of the instance's rendezvous token. Every other rank
reaches the store through a forwarder on its own loopback that answers the challenge for it.

Each node derives the token from the cluster secret and the instance id
(`tandem.cluster.auth.rendezvous_token`) and hands it to its runners in their environment: it never crosses the network, and the challenge
changes with every connection, so a recorded handshake opens nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import sys
import threading
from collections.abc import Callable

CHALLENGE_BYTES = 32
ANSWER_BYTES = 32  # SHA-256
HANDSHAKE_TIMEOUT = 5.0  # seconds a connection has to answer the challenge
_ANSWER_TAG = b"tandem-rendezvous-answer-v1"
_CHUNK = 1 << 16


def challenge_answer(token: str, challenge: bytes) -> bytes:
    return hmac.new(token.encode(), _ANSWER_TAG + challenge, hashlib.sha256).digest()


def _log(message: str) -> None:
    print(f"rendezvous: {message}", file=sys.stderr, flush=True)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _copy(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(_CHUNK):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _splice(first: socket.socket, second: socket.socket) -> None:
    """Copy bytes both ways until both sides are done, then close both."""
    other_way = threading.Thread(target=_copy, args=(second, first), daemon=True)
    other_way.start()
    _copy(first, second)
    other_way.join()
    first.close()
    second.close()


class _Listener:
    """A listening socket whose connections are each handled on a thread of their own."""

    def __init__(self, host: str, handle: Callable[[socket.socket, str], None], port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # an IPv6 literal
        self.socket = socket.create_server((host, port), family=family, backlog=64)
        self.port: int = self.socket.getsockname()[1]
        self._handle = handle
        threading.Thread(target=self._accept_forever, daemon=True).start()

    def _accept_forever(self) -> None:
        while True:
            try:
                connection, address = self.socket.accept()
            except OSError:
                return  # closed
            peer = f"{address[0]}:{address[1]}"
            threading.Thread(target=self._handle, args=(connection, peer), daemon=True).start()

    def close(self) -> None:
        self.socket.close()


class Gate(_Listener):
    """Rank 0's door to its store: on `host` (the advertised address), for the token's holders;
    on `port`, or a free one (0)."""

    def __init__(self, host: str, store_port: int, token: str, port: int = 0) -> None:
        self.store_port = store_port
        self.token = token
        super().__init__(host, self._admit, port)

    def _admit(self, connection: socket.socket, peer: str) -> None:
        challenge = os.urandom(CHALLENGE_BYTES)
        try:
            connection.settimeout(HANDSHAKE_TIMEOUT)
            connection.sendall(challenge)
            answer = _receive_exactly(connection, ANSWER_BYTES)
        except OSError as error:
            answer = b""
            _log(f"refused a connection from {peer}: {type(error).__name__} during the handshake")
        if not hmac.compare_digest(answer, challenge_answer(self.token, challenge)):
            if answer:
                _log(
                    f"refused a connection from {peer}: wrong rendezvous token (not a rank of this instance)"
                )
            connection.close()
            return
        connection.settimeout(None)
        try:
            store = socket.create_connection(("127.0.0.1", self.store_port))
        except OSError:
            connection.close()
            return
        _splice(connection, store)


class Forwarder(_Listener):
    """A rank's loopback way to rank 0's gate: answers the challenge, then carries the store's bytes."""

    def __init__(self, gate_host: str, gate_port: int, token: str) -> None:
        self.gate = (gate_host, gate_port)
        self.token = token
        super().__init__("127.0.0.1", self._forward)

    def _forward(self, connection: socket.socket, _: str) -> None:
        try:
            gate = socket.create_connection(self.gate, timeout=HANDSHAKE_TIMEOUT)
            challenge = _receive_exactly(gate, CHALLENGE_BYTES)
            gate.sendall(challenge_answer(self.token, challenge))
            gate.settimeout(None)
        except OSError as error:
            _log(f"cannot reach rank 0 at {self.gate[0]}:{self.gate[1]}: {type(error).__name__}")
            connection.close()
            return
        _splice(connection, gate)


def loopback_listener() -> socket.socket:
    """A socket listening on loopback only, for rank 0's store (`master_listen_fd`)."""
    return socket.create_server(("127.0.0.1", 0), backlog=64)
