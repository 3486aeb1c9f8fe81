"""The WRPN integer grids: which levels are legal for a bit width, and checks that reject the rest."""

import numpy as np

from ..bits import check_bit_width
from ..errors import WrpnError

WORD_BITS = (32, 64)


def check_bits(abits: int, wbits: int) -> None:
    check_bit_width(abits, "activation bits")
    check_bit_width(wbits, "weight bits")


def check_word_bits(word_bits: int) -> None:
    if word_bits not in WORD_BITS:
        raise WrpnError(f"word_bits must be one of {WORD_BITS}, got {word_bits!r}")


def activation_range(abits: int) -> tuple[int, int]:
    return 0, 2**abits - 1


def weight_levels_allowed(wbits: int) -> np.ndarray:
    """Every legal weight level: +-1 at 1 bit, else the symmetric signed grid with zero."""
    if wbits == 1:
        return np.array([-1, 1])
    top = 2 ** (wbits - 1) - 1
    return np.arange(-top, top + 1)


def _as_integer_levels(levels, what: str) -> np.ndarray:
    arr = np.asarray(levels)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise WrpnError(f"{what} levels must be integers")
    elif arr.dtype.kind not in "iub":
        raise WrpnError(f"{what} levels must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_activation_levels(x, abits: int) -> np.ndarray:
    """Return x as int64 levels, or raise WrpnError if any level is off [0, 2^abits - 1]."""
    arr = _as_integer_levels(x, "activation")
    lo, hi = activation_range(abits)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise WrpnError(
            f"activation levels must lie in [{lo}, {hi}] for {abits} bits, "
            f"got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def check_weight_levels(w, wbits: int) -> np.ndarray:
    """Return w as int64 levels, or raise WrpnError if any level is off the WRPN weight grid."""
    arr = _as_integer_levels(w, "weight")
    allowed = weight_levels_allowed(wbits)
    bad = ~np.isin(arr, allowed)
    if bad.any():
        grid = "{-1, +1}" if wbits == 1 else f"[{allowed[0]}, {allowed[-1]}]"
        raise WrpnError(f"weight levels must lie in {grid} for {wbits} bits, got {arr[bad].flat[0]}")
    return arr
