"""Delimited text files (MovieLens, RecBole atomic files, BEIR qrels) read row by row.

A row with the wrong number of fields must stop the load with the file, the line and the expected format,
not surface later as ``not enough values to unpack`` with neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rsd_env.io import read_text

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def delimited_rows(
    path: str | Path | Traversable,
    sep: str,
    what: str,
    expected: str,
    width: int | None = None,
    min_width: int = 1,
    encoding: str = "utf-8",
    skip: int = 0,
) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-empty line after the first ``skip`` lines.

    ``width`` (exact) or ``min_width`` fields per line; ``expected`` describes a good line for the error.
    """
    for lineno, line in enumerate(read_text(path, what, encoding).splitlines(), 1):
        if lineno <= skip or not line:
            continue
        parts = line.split(sep)
        if (width is not None and len(parts) != width) or len(parts) < min_width:
            count = f"{width}" if width is not None else f"at least {min_width}"
            raise ValueError(f"{what} {path} line {lineno}: {len(parts)} field(s) separated by {sep!r}, expected "
                             f"{count} ({expected}); got {line[:80]!r}. Fix that line")
        yield lineno, parts
