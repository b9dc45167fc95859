"""`tandem download MODEL [--layers START:END]`: fetch a model's files into the Hugging Face cache.

Only the config, tokenizer and the weight files of the layers asked for are fetched (all layers
by default); an interrupted download continues where it stopped; every file is checked against
the Hub's hash. Progress goes to stderr, the model's local directory to stdout.
"""

from __future__ import annotations

import argparse

from tandem.errors import TandemError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a catalog id (see `tandem models`) or a Hugging Face repo id, optionally @REVISION",
    )
    parser.add_argument(
        "--layers",
        metavar="START:END",
        help="only the files of decoder layers [START, END) (plus the embedding for START 0, the head "
        "for the last layer)",
    )


def parse_layers(text: str | None):
    """ "START:END" as a LayerRange; None for the whole model."""
    if text is None:
        return None
    from tandem.model.stage import LayerRange

    start, colon, end = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return LayerRange(int(start), int(end))
    except ValueError:
        raise TandemError(f"--layers takes START:END with 0 <= START < END, not {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from tandem.store.names import parse_model_name
    from tandem.store.terminal import fetch_with_progress

    layers = parse_layers(args.layers)
    if parse_model_name(args.model).kind != "repo":
        raise TandemError(f"{args.model} is already on this machine: nothing to download")
    snapshot = fetch_with_progress(args.model, layers, say_if_present=True)
    print(snapshot)
    return 0
