"""A rank-0 rendezvous and its callers as small processes, to run inside test network namespaces.

    python rendezvous_probe.py serve HOST TOKEN        # prints "GATE STORE" ports, then serves
    python rendezvous_probe.py join HOST PORT TOKEN    # a rank's store client through a forwarder
    python rendezvous_probe.py direct HOST PORT        # a torch store client with no token

`join` and `direct` print "joined VALUE" (they read the key the server set) or "refused TYPE".
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import torch.distributed as dist

from tandem.runner.rendezvous import Forwarder, Gate, loopback_listener

TIMEOUT = timedelta(seconds=3)


def serve(host: str, token: str) -> None:
    listener = loopback_listener()
    store = dist.TCPStore(
        "127.0.0.1",
        listener.getsockname()[1],
        is_master=True,
        timeout=TIMEOUT,
        wait_for_workers=False,
        master_listen_fd=listener.detach(),
    )
    store.set("greeting", "hello from rank 0")
    gate = Gate(host, store.port, token)
    print(gate.port, store.port, flush=True)
    time.sleep(600)


def client(host: str, port: int) -> None:
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=TIMEOUT)
        print("joined", store.get("greeting").decode(), flush=True)
    except Exception as error:  # what an outsider sees: any failure to reach the store
        print("refused", type(error).__name__, flush=True)


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "serve":
        serve(args[0], args[1])
    elif command == "join":
        forwarder = Forwarder(args[0], int(args[1]), args[2])
        client("127.0.0.1", forwarder.port)
    else:
        client(args[0], int(args[1]))


if __name__ == "__main__":
    main()
