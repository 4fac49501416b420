"""The ``rgb_array`` picture of an RSD episode: what the LLM said about the committed ranking.

Why a picture: SB3's ``make_vec_env`` and Gymnasium's ``RecordVideo`` ask for ``render_mode="rgb_array"``,
and a frame per step shows at a glance how verification rounds sharpen the ranking. Pure numpy, so the
env needs no plotting library.

The frame is an m x m heat map of the latest verification (rows: positions of the verified proposal;
columns: the items in that same order, so a proposal the LLM fully agrees with lights up the diagonal). A
cell's brightness is the LLM's probability of that item at that position, relative to the row's best; rows
not verified yet are black (before the first round only the first-token row is known). The target's item
at each position is marked green, and the verified prefix has a blue stripe on the left.
"""

from __future__ import annotations

import numpy as np

MAX_SIDE = 512  # pixels: cells shrink as N grows, down to 2 px (N = 100: 5 px cells)


def ranking_frame(logprobs: np.ndarray, shown: np.ndarray, target: np.ndarray, locked: int) -> np.ndarray:
    """An (H, W, 3) uint8 frame.

    ``logprobs``: (m, m) [position, item] log-probs (rows not known: NaN); ``shown``: the ranking whose rows
    they are; ``target``: the target's ranking; ``locked``: the verified prefix length.
    """
    m = len(shown)
    if logprobs.shape != (m, m):
        raise ValueError(f"logprobs must have shape ({m}, {m}), got {logprobs.shape}")
    cell = max(2, MAX_SIDE // m)
    known = ~np.isnan(logprobs).any(axis=1)
    rows = np.where(known[:, None], logprobs[:, shown], -np.inf)  # columns in the shown order
    best = np.where(known, rows.max(axis=1), 0.0)[:, None]
    grey = (255 * np.exp(rows - best)).astype(np.uint8)
    image = np.repeat(grey[:, :, None], 3, axis=2)
    column_of = np.empty(m, dtype=np.int64)
    column_of[shown] = np.arange(m)
    image[np.arange(m), column_of[target]] = (40, 200, 60)  # the target's item at each position
    image = image.repeat(cell, axis=0).repeat(cell, axis=1)
    stripe = np.zeros((m * cell, cell, 3), dtype=np.uint8)
    stripe[: locked * cell] = (40, 90, 220)  # the verified prefix
    return np.concatenate([stripe, image], axis=1)
