"""Where a node's cluster secret comes from: --secret, TANDEM_SECRET, or the secret file.

Every machine of one cluster needs the same secret. The first node to start writes a new one to
its secret file (`tandem.settings.secret_path()`); copy that file to the other machines, or give
them the same text through --secret or TANDEM_SECRET.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tandem import settings
from tandem.cluster.auth import generate_secret, parse_secret
from tandem.errors import TandemError


@dataclass(frozen=True)
class ResolvedSecret:
    """The secret bytes and where they came from, for one log line ("secret from TANDEM_SECRET")."""

    secret: bytes
    source: str


def resolve_secret(
    explicit: str | None = None, create: bool = True, path: Path | None = None
) -> ResolvedSecret:
    """The cluster secret, first found of: `explicit` (--secret), TANDEM_SECRET, the secret file
    (`path`, by default `secret` in the data directory).

    With none of them and `create`, a new secret is written to the secret file (readable by its
    owner only); without `create`, that is a TandemError saying how to provide one.
    """
    if explicit is not None:
        return ResolvedSecret(parse_secret(explicit, "--secret"), "--secret")
    from_environment = settings.secret()
    if from_environment is not None:
        return ResolvedSecret(parse_secret(from_environment, "TANDEM_SECRET"), "TANDEM_SECRET")
    path = path or settings.secret_path()
    if path.exists():
        return ResolvedSecret(read_secret_file(path), str(path))
    if not create:
        raise TandemError(
            f"no cluster secret: pass --secret, set TANDEM_SECRET, or copy the secret file to {path}"
        )
    secret = generate_secret()
    try:
        write_secret_file(path, secret)
    except FileExistsError:  # another node on this machine wrote it first: use theirs
        return ResolvedSecret(read_secret_file(path), str(path))
    return ResolvedSecret(secret, f"new secret written to {path}")


def read_secret_file(path: Path) -> bytes:
    """The secret stored in `path`, validated; a TandemError names the file when it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TandemError(f"cannot read the cluster secret file {path}: {error}") from None
    return parse_secret(text, f"the secret in {path}")


def write_secret_file(path: Path, secret: bytes) -> None:
    """Store `secret` in `path` with mode 0600, creating the directory.

    Never overwrites: an existing file raises FileExistsError, so a cluster's secret is not lost.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two nodes starting at once on one machine must not each write their own secret.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise
    except OSError as error:
        raise TandemError(f"cannot write the cluster secret file {path}: {error}") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret.decode("utf-8") + "\n")
