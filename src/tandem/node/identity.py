"""A node's stable id, kept in its data directory so a restarted machine is the same node."""

from __future__ import annotations

import secrets
from pathlib import Path

from tandem.errors import TandemError

ID_FILE = "node_id"


def load_or_create_node_id(data_dir: Path) -> str:
    path = data_dir / ID_FILE
    try:
        if path.exists():
            node_id = path.read_text().strip()
            if node_id:
                return node_id
        data_dir.mkdir(parents=True, exist_ok=True)
        node_id = secrets.token_hex(8)
        path.write_text(node_id + "\n")
        return node_id
    except OSError as error:
        raise TandemError(f"cannot keep the node id in {data_dir}: {error.strerror}") from None
