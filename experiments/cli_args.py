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
