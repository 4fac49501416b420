"""Argument types shared by the command-line tools, so each refuses the same bad input the same way."""

from __future__ import annotations

import argparse


def at_least_one(text: str) -> int:
    """argparse ``type`` for counts that must be >= 1 (``--threads``): an error naming the value, not a clamp."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """``--threads``: torch's CPU threads in this process (timings are steadier with 1 per process when
    several jobs share a machine; two OpenMP pools on one core wait on each other)."""
    parser.add_argument("--threads", type=at_least_one, default=None,
                        help=f"torch CPU threads (default: torch's choice); 1 per process when several jobs share "
                             f"a machine, for steadier timings{extra}")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads when ``--threads`` was given (torch is imported only then)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
