"""AVX2 popcount-accumulate intrinsics: the bit-serial inner loop as nibble lookups (`vpshufb`)
whose byte counts are summed over plane pairs and words before one widening (`vpmaddubsw`) into
16-bit lanes that hold the whole reduction; the tile is decoded when it is written back.

AVX2 has no vector popcount. LLVM lowers a popcount of 64-bit lanes to a nibble split, two
`vpshufb` lookups, `vpaddb` and a `vpsadbw` per AND, then adds at 64 bits: nine operations per
256-bit AND, each popcount widened on its own (Mula, Kurz, Lemire, "Faster population counts
using AVX2 instructions", 2018: delay the widening). Here, per reduction word and vector of 4
output channels (64-bit words):
  * the nibble split moves to the operands: (A & W) & 0x0F.. = (A & 0x0F..) & W and
    ((A & W) >> 4) & 0x0F.. = ((A >> 4) & 0x0F..) & (W >> 4), so it is paid once per activation
    word and pixel (scalar, then broadcast) and once per weight vector, not per plane pair;
  * each pair's coefficient |c_j 2^(i+j)| is folded into its lookup table (a table of
    |c| x popcount(nibble)), and the pairs of one sign are summed in bytes, then widened once:
    `vpmaddubsw` with +1 bytes adds neighbouring bytes into signed 16-bit lanes, added to
    (positive pairs) or subtracted from (negative top weight plane) the accumulator.
That is two ANDs, two lookups and two byte adds per pair, plus two widenings and two 16-bit adds
per word and vector (26 operations for 2/2 instead of 36, and one accumulator register instead
of four). Up to `words` reduction words are summed in bytes before the widening.

Correctness rests on every update of the accumulator tile going through the update intrinsic and
its write-back through the decoding one (the template applies both or neither), and on the
bounds in `NibbleCounts`: byte sums below 256, 16-bit lanes that cannot overflow over the layer's
reduction. The accumulator's int64 slot of a channel holds that channel's four 16-bit lanes.
"""

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops.bitserial import _plane_dot

WORD = "uint64"  # the CPU lowering packs 64-bit words
ACCUMULATOR = "int64"  # what the bit-serial computes accumulate 64-bit words in
YMM_BYTES = 32
LANES = YMM_BYTES * 8 // 64  # output channels per ymm register
COUNT_LANE_BITS = 16
COUNT_LANES_PER_CHANNEL = 64 // COUNT_LANE_BITS
COUNT_LANE_MAX = 2 ** (COUNT_LANE_BITS - 1) - 1  # signed: negative pairs are subtracted
BYTE_MAX = 255
BITS_PER_BYTE = 8
WORDS_PER_UPDATE = (4, 2, 1)  # reduction words summed in bytes per widening, most first
LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F
_WORDS_BYTES = f"uint8x{YMM_BYTES}"
_WORDS_VECTOR = f"{WORD}x{LANES}"
_COUNTS_VECTOR = f"int16x{YMM_BYTES // 2}"
DECODE_INTRIN = "wrpn_avx2_decode_counts"


@dataclass(frozen=True)
class NibbleCounts:
    """How a layer's (abits, wbits) accumulates in 16-bit lanes, `words` reduction words per update."""

    abits: int
    wbits: int
    words: int

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(activation plane, weight plane) pairs, in the order the update adds them."""
        return [(i, j) for i in range(self.abits) for j in range(self.wbits)]

    def coefficient(self, i: int, j: int) -> int:
        """c_j 2^(i+j): the top weight plane is negative (two's complement) unless wbits is 1."""
        return -(2 ** (i + j)) if self.wbits > 1 and j == self.wbits - 1 else 2 ** (i + j)

    def weight_sum(self, negative: bool) -> int:
        """sum of |c| over the pairs of one sign: a byte of one word gains at most 8 times this."""
        return sum(abs(self.coefficient(i, j)) for i, j in self.pairs if (self.coefficient(i, j) < 0) == negative)

    @property
    def multipliers(self) -> list[int]:
        """The distinct |c| (one lookup table each)."""
        return sorted({abs(self.coefficient(i, j)) for i, j in self.pairs})

    def bytes_fit(self) -> bool:
        """Whether each sign's byte sum over `words` words stays below 256 (and each table entry,
        |c| x 4, fits a byte)."""
        largest = max(self.weight_sum(False), self.weight_sum(True))
        return self.words * BITS_PER_BYTE * largest <= BYTE_MAX and 4 * max(self.multipliers) <= BYTE_MAX

    @property
    def max_words(self) -> int:
        """Reduction words before a 16-bit lane (two bytes of a word, each up to 8 x sum|c| of one
        sign) could overflow."""
        return COUNT_LANE_MAX // (2 * BITS_PER_BYTE * max(self.weight_sum(False), self.weight_sum(True)))

    def fits(self, reduction_words: int) -> bool:
        return self.bytes_fit() and reduction_words <= self.max_words and reduction_words % self.words == 0

    @property
    def update_intrin(self) -> str:
        return f"wrpn_avx2_nibble_count_accumulate_a{self.abits}w{self.wbits}_k{self.words}"


def nibble_counts(abits: int, wbits: int, reduction_words: int, channel_words: int) -> "NibbleCounts | None":
    """The plan for a layer: the most words per update that divide the channel words (the loop
    the update covers) and keep the bytes from overflowing; None where 16-bit lanes do not fit."""
    for words in WORDS_PER_UPDATE:
        plan = NibbleCounts(abits, wbits, words)
        if channel_words % words == 0 and plan.fits(reduction_words):
            return plan
    return None


def _update_func(plan: NibbleCounts, implementation: bool) -> tirx.PrimFunc:
    """`words` reduction words for one ymm of channels: C += plane_dot(A, W) as the computes
    write it (description), or nibble counts into C's 16-bit lanes (implementation).
    A is the activation words [abits, words], W the weights [wbits, words, 4 channels]."""
    with IRBuilder() as builder:
        with build_prim_func():
            a, w, c = T.arg("a", T.handle()), T.arg("w", T.handle()), T.arg("c", T.handle())
            # Both inputs are regions of larger buffers (planes are channel words apart).
            strides = {"strides": [T.int32(), T.int32()]} if implementation else {}
            w_strides = {"strides": [T.int32(), T.int32(), 1]} if implementation else {}
            A = T.match_buffer(a, (plan.abits, plan.words), WORD, offset_factor=1, **strides)
            W = T.match_buffer(w, (plan.wbits, plan.words, LANES), WORD, offset_factor=1, **w_strides)
            C = T.match_buffer(c, (LANES,), ACCUMULATOR, offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:LANES], A[0 : plan.abits, 0 : plan.words], W[0 : plan.wbits, 0 : plan.words, 0:LANES])
                T.writes(C[0:LANES])
                if implementation:
                    _accumulate_nibble_counts(plan, A, W, C)
                else:
                    # One reduction word is no loop at all in the schedule (and no block iterator).
                    with T.grid(plan.words, LANES) if plan.words > 1 else T.grid(LANES) as loop_vars:
                        k, o = loop_vars if plan.words > 1 else (None, loop_vars)
                        with T.sblock("update"):
                            # Block iterators in the computes' order: the channel, then the word.
                            vo = T.axis.spatial(LANES, o)
                            vk = T.axis.reduce(plan.words, k) if plan.words > 1 else 0
                            T.reads(C[vo], A[0 : plan.abits, vk], W[0 : plan.wbits, vk, vo])
                            T.writes(C[vo])
                            activations = [A[i, vk] for i in range(plan.abits)]
                            weights = [W[j, vk, vo] for j in range(plan.wbits)]
                            T.buffer_store(C, C[vo] + _plane_dot(activations, weights, plan.wbits, ACCUMULATOR), [vo])
    return builder.get()


def _x86(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(dtype, f"llvm.x86.avx2.{name}", *args)


def _count_table(multiplier: int):
    """Bytes multiplier x popcount(k & 15) for k = 0..31: vpshufb looks up each 128-bit half."""
    index = tirx.Ramp(tirx.const(0, "uint8"), tirx.const(1, "uint8"), YMM_BYTES)
    bits = [(index >> T.broadcast(tirx.const(b, "uint8"), YMM_BYTES)) & T.broadcast(tirx.const(1, "uint8"), YMM_BYTES)
            for b in range(4)]
    return (bits[0] + bits[1] + bits[2] + bits[3]) * T.broadcast(tirx.const(multiplier, "uint8"), YMM_BYTES)


def _accumulate_nibble_counts(plan: NibbleCounts, A, W, C) -> None:
    """Per word: split the operands into nibbles, look up |c| x popcount per pair and sum the
    bytes per sign; then widen each sign's bytes once and add them into C's 16-bit lanes."""
    low = tirx.const(LOW_NIBBLES, WORD)
    four = T.broadcast(tirx.const(4, WORD), LANES)
    tables = {m: _count_table(m) for m in plan.multipliers}
    sums = {False: None, True: None}  # by "negative"
    for k in range(plan.words):
        a_low = [T.broadcast(A[i, k] & low, LANES) for i in range(plan.abits)]
        a_high = [T.broadcast((A[i, k] >> tirx.const(4, WORD)) & low, LANES) for i in range(plan.abits)]
        weights = [W.vload([j, k, 0], _WORDS_VECTOR) for j in range(plan.wbits)]
        weights_high = [weight >> four for weight in weights]
        for i, j in plan.pairs:
            coefficient = plan.coefficient(i, j)
            for nibbles in (a_low[i] & weights[j], a_high[i] & weights_high[j]):
                count = _x86("pshuf.b", _WORDS_BYTES, tables[abs(coefficient)], T.reinterpret(_WORDS_BYTES, nibbles))
                negative = coefficient < 0
                sums[negative] = count if sums[negative] is None else sums[negative] + count
    ones = T.broadcast(tirx.const(1, "uint8"), YMM_BYTES)
    total = T.reinterpret(_COUNTS_VECTOR, C.vload([0], f"{ACCUMULATOR}x{LANES}"))
    for negative, byte_sum in sums.items():
        if byte_sum is None:
            continue
        widened = _x86("pmadd.ub.sw", _COUNTS_VECTOR, byte_sum, ones)
        total = total - widened if negative else total + widened
    T.buffer_store(C, T.reinterpret(f"{ACCUMULATOR}x{LANES}", total), [T.ramp(0, 1, LANES)])


def _decode_func(implementation: bool) -> tirx.PrimFunc:
    """The write-back of one ymm of accumulators: a copy (description), or each channel's four
    signed 16-bit lanes summed (implementation)."""
    with IRBuilder() as builder:
        with build_prim_func():
            s, d = T.arg("s", T.handle()), T.arg("d", T.handle())
            S = T.match_buffer(s, (LANES,), ACCUMULATOR, offset_factor=1, scope="local")
            D = T.match_buffer(d, (LANES,), ACCUMULATOR, offset_factor=1)
            with T.sblock("root"):
                T.reads(S[0:LANES])
                T.writes(D[0:LANES])
                if implementation:
                    # Unrolled, constant indices: the tile stays promotable to registers.
                    for o in range(LANES):
                        T.buffer_store(D, _decoded_channel(S[o]), [o])
                else:
                    with T.serial(0, LANES) as o:
                        with T.sblock("writeback"):
                            vo = T.axis.spatial(LANES, o)
                            T.reads(S[vo])
                            T.writes(D[vo])
                            T.buffer_store(D, S[vo], [vo])
    return builder.get()


def _decoded_channel(slot):
    """The sum of the four signed 16-bit lanes in one int64 slot (shift up, shift down arithmetically)."""
    total = None
    for lane in range(COUNT_LANES_PER_CHANNEL):
        up = tirx.const(64 - COUNT_LANE_BITS * (lane + 1), ACCUMULATOR)
        field = (slot << up) >> tirx.const(64 - COUNT_LANE_BITS, ACCUMULATOR)
        total = field if total is None else total + field
    return total


def _register_all() -> None:
    TensorIntrin.register(DECODE_INTRIN, _decode_func(False), _decode_func(True), override=True)
    for abits in range(1, 5):
        for wbits in range(1, 5):
            for words in WORDS_PER_UPDATE:
                plan = NibbleCounts(abits, wbits, words)
                if plan.bytes_fit():
                    TensorIntrin.register(plan.update_intrin, _update_func(plan, False), _update_func(plan, True),
                                          override=True)


# At import: a tuning record's trace names these intrinsics, and replaying it needs them registered.
_register_all()
