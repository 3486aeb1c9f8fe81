"""AVX2 popcount-accumulate intrinsics: the bit-serial inner loop as nibble lookups (`vpshufb`)
whose byte counts are summed over the plane pairs, with their signs and weights, into one signed
byte per channel byte, widened once per word (`vpmaddubsw`) into 16-bit lanes that hold the whole
reduction; the tile is decoded when it is written back.

AVX2 has no vector popcount. LLVM lowers a popcount of 64-bit lanes to a nibble split, two
`vpshufb` lookups, `vpaddb` and a `vpsadbw` per AND, then adds at 64 bits: nine operations per
256-bit AND, each popcount widened on its own (Mula, Kurz, Lemire, "Faster population counts
using AVX2 instructions", 2018: delay the widening). Here, per reduction word and vector of 4
output channels (64-bit words):
  * the nibble split moves to the operands: (A & W) & 0x0F.. = (A & 0x0F..) & W and
    ((A & W) >> 4) & 0x0F.. = ((A >> 4) & 0x0F..) & (W >> 4), so it is paid once per activation
    word and pixel and once per weight vector, not per plane pair;
  * each pair's weight |c_j 2^(i+j)| is folded into its lookup table (|c| x popcount(nibble)),
    and the lookups are added (positive pairs) or subtracted (the negative top weight plane) in
    wrapping bytes: each byte's final value, the byte's share of sum(A * W), fits a signed byte
    (`fits`), so intermediate wrap-around cancels;
  * `vpmaddubsw` of +1 bytes with that signed byte sum adds neighbouring bytes into signed 16-bit
    lanes, added to the accumulator. Where a word's sum can leave a signed byte (4/2, 2/4, 3/3),
    the positive and the negative pairs are summed apart in unsigned bytes and widened apart.
That is two ANDs, two lookups and two byte adds per pair, and one widening and one 16-bit add per
word and vector: 25 operations for 2/2 instead of 36, one accumulator register instead of four.
(Summing several words in bytes before widening was measured too: the extra live operands spill
more than the widening saves.)

Correctness rests on every update of the accumulator tile going through the update intrinsic and
its write-back through the decoding one (the template applies both or neither), and on the bounds
in `NibbleCounts`. The accumulator's int64 slot of a channel holds that channel's four 16-bit lanes.
"""

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops.bitserial import _plane_dot

from .common import writeback_func

WORD = "uint64"  # the CPU lowering packs 64-bit words
ACCUMULATOR = "int64"  # what the bit-serial computes accumulate 64-bit words in
YMM_BYTES = 32
LANES = YMM_BYTES * 8 // 64  # output channels per ymm register
BITS_PER_BYTE = 8
NIBBLE_BITS = 4
COUNT_LANE_BITS = 16
COUNT_LANES_PER_CHANNEL = 64 // COUNT_LANE_BITS
COUNT_LANE_MAX = 2 ** (COUNT_LANE_BITS - 1) - 1
SIGNED_BYTE_MIN, SIGNED_BYTE_MAX, UNSIGNED_BYTE_MAX = -128, 127, 255
LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F
DECODE_INTRIN = "wrpn_avx2_decode_counts"
_BYTES = f"uint8x{YMM_BYTES}"
_WORDS = f"{WORD}x{LANES}"
_ACCUMULATORS = f"{ACCUMULATOR}x{LANES}"
_COUNTS = f"int16x{YMM_BYTES // 2}"


@dataclass(frozen=True)
class NibbleCounts:
    """How a layer's (abits, wbits) accumulates nibble counts in 16-bit lanes."""

    abits: int
    wbits: int

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(activation plane, weight plane) pairs, in the order the update adds them."""
        return [(i, j) for i in range(self.abits) for j in range(self.wbits)]

    def coefficient(self, i: int, j: int) -> int:
        """c_j 2^(i+j): the top weight plane is negative (two's complement) unless wbits is 1."""
        return -(2 ** (i + j)) if self.wbits > 1 and j == self.wbits - 1 else 2 ** (i + j)

    def _byte_range(self) -> tuple[int, int]:
        """The least and most one byte's signed sum can be for one word (each byte of A & W has
        at most 8 bits set)."""
        coefficients = [self.coefficient(i, j) for i, j in self.pairs]
        return (BITS_PER_BYTE * sum(c for c in coefficients if c < 0),
                BITS_PER_BYTE * sum(c for c in coefficients if c > 0))

    @property
    def max_words(self) -> int:
        """Reduction words before a 16-bit lane (two bytes of each word) could overflow."""
        low, high = self._byte_range()
        return COUNT_LANE_MAX // (2 * max(-low, high))

    @property
    def signed_bytes(self) -> bool:
        """Whether one word's byte sum over all pairs fits a signed byte; otherwise the positive and
        the negative pairs are summed apart, each in unsigned bytes, and widened apart."""
        low, high = self._byte_range()
        return SIGNED_BYTE_MIN <= low and high <= SIGNED_BYTE_MAX

    def fits(self, reduction_words: int) -> bool:
        low, high = self._byte_range()
        return max(-low, high) <= UNSIGNED_BYTE_MAX and reduction_words <= self.max_words

    @property
    def update_intrin(self) -> str:
        return f"wrpn_avx2_nibble_count_accumulate_a{self.abits}w{self.wbits}"


def nibble_counts(abits: int, wbits: int, reduction_words: int) -> "NibbleCounts | None":
    """The plan for a layer, or None where a word's byte sums or the reduction do not fit."""
    plan = NibbleCounts(abits, wbits)
    return plan if plan.fits(reduction_words) else None


def _update_func(plan: NibbleCounts, implementation: bool) -> tirx.PrimFunc:
    """One reduction word for one ymm of channels: C += plane_dot(A, W) as the computes write it
    (description), or nibble counts into C's 16-bit lanes (implementation).
    A is the activation words of the planes [abits, 1], W the weights [wbits, 1, 4 channels]."""
    with IRBuilder() as builder:
        with build_prim_func():
            a, w, c = T.arg("a", T.handle()), T.arg("w", T.handle()), T.arg("c", T.handle())
            # Both inputs are regions of larger buffers (planes are channel words apart).
            strides = {"strides": [T.int32(), T.int32()]} if implementation else {}
            w_strides = {"strides": [T.int32(), T.int32(), 1]} if implementation else {}
            A = T.match_buffer(a, (plan.abits, 1), WORD, offset_factor=1, **strides)
            W = T.match_buffer(w, (plan.wbits, 1, LANES), WORD, offset_factor=1, **w_strides)
            C = T.match_buffer(c, (LANES,), ACCUMULATOR, offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:LANES], A[0 : plan.abits, 0:1], W[0 : plan.wbits, 0:1, 0:LANES])
                T.writes(C[0:LANES])
                if implementation:
                    _accumulate_nibble_counts(plan, A, W, C)
                else:
                    with T.serial(0, LANES) as o:
                        with T.sblock("update"):
                            vo = T.axis.spatial(LANES, o)
                            T.reads(C[vo], A[0 : plan.abits, 0], W[0 : plan.wbits, 0, vo])
                            T.writes(C[vo])
                            activations = [A[i, 0] for i in range(plan.abits)]
                            weights = [W[j, 0, vo] for j in range(plan.wbits)]
                            T.buffer_store(C, C[vo] + _plane_dot(activations, weights, plan.wbits, ACCUMULATOR), [vo])
    return builder.get()


def _avx2(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(dtype, f"llvm.x86.avx2.{name}", *args)


def _bytes(value: int):
    return T.broadcast(tirx.const(value, "uint8"), YMM_BYTES)


def _count_table(multiplier: int):
    """Bytes multiplier x popcount(k & 15) for k = 0..31: vpshufb looks up each 128-bit half.
    (A wrapping byte: a negative pair's table is subtracted, so only |c| is stored.)"""
    index = tirx.Ramp(tirx.const(0, "uint8"), tirx.const(1, "uint8"), YMM_BYTES)
    bits = [(index >> _bytes(b)) & _bytes(1) for b in range(NIBBLE_BITS)]
    return (bits[0] + bits[1] + bits[2] + bits[3]) * _bytes(multiplier)


def _accumulate_nibble_counts(plan: NibbleCounts, A, W, C) -> None:
    """Split the operands into nibbles, look up |c| x popcount per pair, sum the lookups in bytes,
    widen each byte sum once and add or subtract it in C's 16-bit lanes."""
    low = tirx.const(LOW_NIBBLES, WORD)
    shift = tirx.const(NIBBLE_BITS, WORD)
    a_low = [T.broadcast(A[i, 0] & low, LANES) for i in range(plan.abits)]
    a_high = [T.broadcast((A[i, 0] >> shift) & low, LANES) for i in range(plan.abits)]
    weights = [W.vload([j, 0, 0], _WORDS) for j in range(plan.wbits)]
    weights_high = [weight >> T.broadcast(shift, LANES) for weight in weights]
    # Byte sums by whether they are subtracted once widened: one signed sum (negative pairs
    # subtracted in bytes), or an unsigned sum per sign. Positive pairs come first, so that a sum
    # starts from a lookup rather than from zero.
    sums = {}
    for i, j in sorted(plan.pairs, key=lambda pair: plan.coefficient(*pair) < 0):
        coefficient = plan.coefficient(i, j)
        widened_negative = coefficient < 0 and not plan.signed_bytes
        for nibbles in (a_low[i] & weights[j], a_high[i] & weights_high[j]):
            count = _avx2("pshuf.b", _BYTES, _count_table(abs(coefficient)), T.reinterpret(_BYTES, nibbles))
            if widened_negative not in sums:
                sums[widened_negative] = count
            elif coefficient < 0 and plan.signed_bytes:
                sums[widened_negative] = sums[widened_negative] - count
            else:
                sums[widened_negative] = sums[widened_negative] + count
    # vpmaddubsw: unsigned bytes times signed bytes, neighbours added: the +1s times a signed sum,
    # or an unsigned sum times the +1s.
    total = T.reinterpret(_COUNTS, C.vload([0], _ACCUMULATORS))
    for widened_negative, byte_sum in sums.items():
        operands = (_bytes(1), byte_sum) if plan.signed_bytes else (byte_sum, _bytes(1))
        widened = _avx2("pmadd.ub.sw", _COUNTS, *operands)
        total = total - widened if widened_negative else total + widened
    T.buffer_store(C, T.reinterpret(_ACCUMULATORS, total), [T.ramp(0, 1, LANES)])


def _store_decoded(S, D) -> None:
    """Each channel's four signed 16-bit lanes summed, unrolled with constant indices: the tile
    stays promotable to registers."""
    for o in range(LANES):
        T.buffer_store(D, _decoded_channel(S[o]), [o])


def _decoded_channel(slot):
    """The sum of the four signed 16-bit lanes of one int64 slot (each shifted to the top, then
    arithmetically back down)."""
    total = None
    for lane in range(COUNT_LANES_PER_CHANNEL):
        up = tirx.const(64 - COUNT_LANE_BITS * (lane + 1), ACCUMULATOR)
        field = (slot << up) >> tirx.const(64 - COUNT_LANE_BITS, ACCUMULATOR)
        total = field if total is None else total + field
    return total


def _register_all() -> None:
    TensorIntrin.register(DECODE_INTRIN, writeback_func(LANES, ACCUMULATOR, None),
                          writeback_func(LANES, ACCUMULATOR, _store_decoded), override=True)
    for abits in range(1, 5):
        for wbits in range(1, 5):
            plan = NibbleCounts(abits, wbits)
            if plan.fits(1):
                TensorIntrin.register(plan.update_intrin, _update_func(plan, False), _update_func(plan, True),
                                      override=True)


# At import: a tuning record's trace names these intrinsics, and replaying it needs them registered.
_register_all()
