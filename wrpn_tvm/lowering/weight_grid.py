"""Which symmetric integer grid, if any, a constant weight tensor lies on (checked numerically).

A grid is weight = L * s[o] with integer levels |L| <= 2^(k-1) - 1 and one scale per output
channel o (a per-tensor scale is the special case of equal s[o]). That covers WRPN's Eq. 2
(s = 1 / (2^(k-1) - 1)), per-tensor and per-channel scales (learned, or fake-quant with a narrow
range), and ternary {-α, 0, α} (k = 2). k = 1 is binary: every channel takes only -s[o] and +s[o].
Each channel's scale is recovered from its weights: the largest unit of which its largest and
smallest magnitudes are both integer multiples (per channel, so the levels are as small as they
can be; a per-tensor grid has equal units, or units that differ by a level's multiple).
Levels must reproduce the weight to float32 rounding, so an approximation is never taken for a grid.
The smallest fitting k wins: fewer bit-planes, and the sums are the same.
"""

from dataclasses import dataclass

import numpy as np

from ..bits import MAX_BITS

TOP_LEVEL = 2 ** (MAX_BITS - 1) - 1
# Frozen weights are L * s rounded to float32; L is recovered to well within this of an integer.
LEVEL_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 1e-6  # |L * s - w| against the channel's largest |w| (float32 rounding is ~1e-7)


@dataclass(frozen=True)
class WeightGrid:
    """Integer levels of a weight (output channel first) and the per-channel value of one level."""

    bits: int
    levels: np.ndarray  # int64, same shape as the weight
    scale: np.ndarray  # float64 [out_channels]: weight = levels * scale[o]


def _unit(magnitudes: np.ndarray) -> tuple[float, np.ndarray] | None:
    """(s, integer levels of the magnitudes) for the largest unit s that fits, or None."""
    nonzero = magnitudes[magnitudes > 0]
    largest, smallest = float(nonzero.max()), float(nonzero.min())
    ratio = largest / smallest
    for multiple in range(1, TOP_LEVEL + 1):  # the smallest magnitude is `multiple` units
        top = ratio * multiple
        if round(top) > TOP_LEVEL:
            return None
        if abs(top - round(top)) > LEVEL_TOLERANCE:
            continue
        unit = largest / round(top)
        levels = np.rint(magnitudes / unit)
        if np.abs(levels * unit - magnitudes).max() <= RELATIVE_TOLERANCE * largest:
            return unit, levels
    return None


def _per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale per output channel, magnitudes in levels), or None."""
    channels = np.abs(weight.reshape(weight.shape[0], -1))
    scales, magnitudes = np.ones(weight.shape[0]), np.zeros_like(channels)
    for o, channel in enumerate(channels):
        if not channel.any():
            continue  # an all-zero channel is level 0 at any scale
        found = _unit(channel)
        if found is None:
            return None
        scales[o], magnitudes[o] = found
    return scales, magnitudes.reshape(weight.shape)


def detect_weight_grid(weight: np.ndarray) -> WeightGrid | None:
    """The smallest-k grid (k in 1..MAX_BITS) the weight lies on, or None."""
    if weight.size == 0 or not np.all(np.isfinite(weight)):
        return None
    weight = weight.astype(np.float64)
    found = _per_channel(weight)
    if found is None:
        return None
    scale, magnitudes = found
    levels = (np.sign(weight) * magnitudes).astype(np.int64)
    top = int(np.abs(levels).max())
    if top == 1 and np.all(levels != 0):
        return WeightGrid(1, levels, scale)
    return WeightGrid(max(2, top.bit_length() + 1), levels, scale)
