"""WRPN's bit widths, and the one check of them: 1..MAX_BITS run as quantized (bit-serial) layers,
FULL_PRECISION (32) means float. Imports nothing heavy, so the model code, the lowering and the
operators all share it."""

from .errors import WrpnError

MAX_BITS = 8  # the widest quantized layer; wider quantizers stay float
FULL_PRECISION = 32
VALID_BITS = tuple(range(1, MAX_BITS + 1)) + (FULL_PRECISION,)


def check_bit_width(bits, what: str = "bits", full_precision: bool = False) -> int:
    """`bits` as an int if it is 1..MAX_BITS (or FULL_PRECISION where allowed), else WrpnError."""
    whole = hasattr(bits, "__index__") and not isinstance(bits, bool)
    if not whole or not (1 <= bits <= MAX_BITS or (full_precision and bits == FULL_PRECISION)):
        allowed = f"1..{MAX_BITS} or {FULL_PRECISION} (full precision)" if full_precision else f"an integer in 1..{MAX_BITS}"
        raise WrpnError(f"{what} must be {allowed}, got {bits!r}")
    return int(bits)
