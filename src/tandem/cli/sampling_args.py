"""Sampling flags shared by the commands that generate text."""

from __future__ import annotations

import argparse

from tandem.model.sampling_params import SamplingParams


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=200, help="most tokens to generate (default 200)")
    group.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default 0.7)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    group.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    group.add_argument(
        "--min-p", type=float, default=0.0, help="drop tokens below min-p × the top probability"
    )
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    group.add_argument("--presence-penalty", type=float, default=0.0, help="-2 to 2, OpenAI-style")
    group.add_argument("--frequency-penalty", type=float, default=0.0, help="-2 to 2, OpenAI-style")
    group.add_argument("--seed", type=int, help="makes sampling reproducible")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )
