"""The one exception type that reaches users: its message is a complete, one-line explanation."""


class TandemError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


class ModelFormatError(TandemError):
    """A checkpoint that is missing, truncated, or does not match its config."""


class UnsupportedModelError(TandemError):
    """A checkpoint of a model type or feature the engine does not implement."""


class InvalidRequestError(TandemError):
    """Bad sampling values, a prompt longer than the context, and other bad input."""


class UnknownInstance(TandemError):
    """No instance with that id (HTTP 404)."""


class PeerUnreachable(TandemError):
    """A peer did not answer, answered with an error, or could not prove it holds the secret
    (HTTP 503)."""
