"""Which WRPN weight grid, if any, a constant weight tensor lies on (checked numerically).

k >= 2: W * (2^(k-1) - 1) is an integer in [-(2^(k-1) - 1), 2^(k-1) - 1] everywhere.
k = 1: every output channel o takes only the values -a_o and +a_o (a_o > 0).
The smallest fitting k wins: fewer bit-planes, and the sums are the same.
"""

from dataclasses import dataclass

import numpy as np

from ..bits import MAX_BITS

# Frozen weights are L / n rounded to float32; L is recovered to well within this of an integer.
LEVEL_TOLERANCE = 1e-3
BINARY_RELATIVE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class WeightGrid:
    """Integer levels of a weight (output channel first) and the per-channel value of one level."""

    bits: int
    levels: np.ndarray  # int64, same shape as the weight
    scale: np.ndarray  # float64 [out_channels]: weight = levels * scale[o]


def _binary_grid(weight: np.ndarray) -> WeightGrid | None:
    per_channel = weight.reshape(weight.shape[0], -1).astype(np.float64)
    alpha = np.abs(per_channel).max(axis=1)
    if np.any(alpha <= 0):
        return None
    if not np.allclose(np.abs(per_channel), alpha[:, None], rtol=BINARY_RELATIVE_TOLERANCE, atol=0.0):
        return None
    levels = np.where(weight >= 0, 1, -1).astype(np.int64)
    return WeightGrid(1, levels, alpha)


def _symmetric_grid(weight: np.ndarray, bits: int) -> WeightGrid | None:
    top = 2 ** (bits - 1) - 1
    scaled = weight.astype(np.float64) * top
    levels = np.round(scaled)
    if np.abs(scaled - levels).max(initial=0.0) > LEVEL_TOLERANCE or np.abs(levels).max(initial=0.0) > top:
        return None
    return WeightGrid(bits, levels.astype(np.int64), np.full(weight.shape[0], 1.0 / top))


def detect_weight_grid(weight: np.ndarray) -> WeightGrid | None:
    """The smallest-k WRPN grid (k in 1..8) the weight lies on, or None."""
    if weight.size == 0 or not np.all(np.isfinite(weight)):
        return None
    grid = _binary_grid(weight)
    if grid is not None:
        return grid
    for bits in range(2, MAX_BITS + 1):
        grid = _symmetric_grid(weight, bits)
        if grid is not None:
            return grid
    return None
