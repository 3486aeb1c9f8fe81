"""NEON popcount-accumulate intrinsics: the aarch64 bit-serial inner loop as `and`, `cnt`, `addp`,
`uadalp`, with the counts kept in 16-bit lanes until the tile is written back.

LLVM lowers a popcount of 64-bit (32-bit) lanes to `cnt v.16b` and a chain of `uaddlp` (.8h,
.4s, .2d) per count, then adds at full width: three widening steps per 128-bit AND. Here the
per-word update of one q register of accumulators (2 output channels of 64-bit words, or 4 of
32-bit words) is tensorized instead: the bytes of the plane pairs' `cnt` results are folded
together with `addp` (each fold halves the bytes per pair and channel) and added into 16-bit lanes
with one `uadalp`. Where the pairs outnumber what a channel's 16-bit lanes can keep apart (4/2,
3/2, 3/1 of 64-bit words), each weight plane's counts are first summed over the activation planes
in bytes, times 2^i (Horner: two adds per plane), and those sums are folded instead. The
accumulator's own local slots hold the 16-bit lanes while the reduction runs (a q register per
pixel and channel vector); the write-back is tensorized to decode them (each class's lanes times
+-2^(i+j), summed per channel).

On cores with dotprod (Cortex-A76: rasp5) a plan may accumulate with `udot vAcc.4s, vCnt.16b,
vOnes.16b` instead: the folds go on in bytes until each class and channel owns whole 4-byte groups,
and udot adds each group into a 32-bit lane (an op either NEON pipe takes, where uadalp takes one;
and lanes that hold any reduction a model has). The layout, and so the decoding, is the same with
32-bit lanes; the templates take it where their tile model rates it no dearer than uadalp.

Correctness rests on every update of the accumulator tile going through the update intrinsic
and its write-back through the decoding one; the template applies both or neither, and only
where the lanes cannot overflow over the layer's reduction or, with periodic widening, over each
chunk of it (`NarrowAccumulation.fits`, `chunk_words`).
"""

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops.bitserial import _plane_dot

from .common import writeback_func

Q_BYTES = 16
UADALP_LANE_BITS = 16  # uadalp .8h: pairs of bytes
UDOT_LANE_BITS = 32  # udot .4s: groups of 4 bytes
ACCUMULATOR = {"uint64": "int64", "uint32": "int32"}  # what the bit-serial computes accumulate in
# Words whose layers may weigh activation planes in bytes, or accumulate with udot: the 64-bit
# words models use on ARM (32-bit words keep the generic template's int32 lanes beyond 2 pairs;
# their int32 slots could not hold a 32-bit lane unsigned).
WEIGHED_WORDS = ("uint64",)
BYTE_MAX = 255
MAX_BITS = 8
# A chunk's widening (decode and add per q register of the tile) costs about one word's updates.
MIN_CHUNK_WORDS = 16
SLI_CHAIN = 8  # channels a column pack inserts in one dependent chain of sli


@dataclass(frozen=True)
class NarrowAccumulation:
    """How a layer's (abits, wbits, word type) accumulates in 16-bit lanes (uadalp), or with
    `dot` in 32-bit lanes (udot with a ones vector)."""

    abits: int
    wbits: int
    word: str
    dot: bool = False

    @property
    def lane_bits(self) -> int:
        return UDOT_LANE_BITS if self.dot else UADALP_LANE_BITS

    @property
    def count_lanes(self) -> int:
        """Count lanes per q register."""
        return Q_BYTES * 8 // self.lane_bits

    @property
    def lane_max(self) -> int:
        return 2**self.lane_bits - 1

    @property
    def word_bits(self) -> int:
        return int(self.word[len("uint"):])

    @property
    def lanes(self) -> int:
        """Output channels per q register (one word each)."""
        return Q_BYTES * 8 // self.word_bits

    @property
    def accumulator(self) -> str:
        return ACCUMULATOR[self.word]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(activation plane, weight plane) pairs."""
        return [(i, j) for i in range(self.abits) for j in range(self.wbits)]

    @property
    def weighs_activation_planes(self) -> bool:
        """Too many pairs for a lane each per channel, or a count that is no power of two (4/2,
        3/2, 3/1 of 64-bit words; with udot also 2/2): each weight plane's counts are summed over
        the activation planes in bytes first, times 2^i (Horner: add a byte vector to itself to
        double it), so that a class is a weight plane, not a pair."""
        pairs = self.abits * self.wbits
        return pairs & (pairs - 1) != 0 or pairs * self.lanes > self.count_lanes

    @property
    def classes(self) -> list[tuple[int, int]]:
        """What the update folds together, as (activation plane, weight plane) of its coefficient:
        the pairs, or one per weight plane (activation planes weighed in bytes: plane 0)."""
        return [(0, j) for j in range(self.wbits)] if self.weighs_activation_planes else self.pairs

    @property
    def level_max(self) -> int:
        """The most one bit of a class's byte counts: 1, or 2^abits - 1 with weighed planes."""
        return 2**self.abits - 1 if self.weighs_activation_planes else 1

    @property
    def lanes_per_count(self) -> int:
        """Lanes that share one (class, channel) count after the fold."""
        return self.count_lanes // (len(self.classes) * self.lanes)

    @property
    def max_words(self) -> int:
        """Reduction words (kernel window x channel words) before a lane could overflow."""
        return self.lane_max // (self.word_bits // self.lanes_per_count * self.level_max)

    @property
    def byte_folds(self) -> int:
        """addp levels done in bytes: each doubles a byte's most (8 x level_max after the Horner
        sum), which must stay <= 255; the remaining levels fold 16-bit lanes (4/4: 8 x 15 x 4
        would not fit a byte)."""
        levels = 0
        # udot adds bytes: all its levels are byte folds (narrow_accumulation checks that they fit).
        while 2**levels < len(self.classes) and (self.dot or MAX_BITS * self.level_max * 2 ** (levels + 1) <= BYTE_MAX):
            levels += 1
        return levels

    @property
    def neon_ops_per_vector(self) -> int:
        """NEON ops of one update: and + cnt per pair, two per Horner step, then the folds: byte
        addp levels and one uadalp, or where bytes would overflow, uaddlp per remaining vector,
        addp .8h levels and an add."""
        horner = 2 * (self.abits - 1) * self.wbits if self.weighs_activation_planes else 0
        classes, vectors = len(self.classes), len(self.classes) >> self.byte_folds
        fold = classes - vectors + (1 if vectors == 1 else 2 * vectors)
        return 2 * len(self.pairs) + horner + fold

    def fits(self, reduction_words: int) -> bool:
        return reduction_words <= self.max_words

    def chunk_words(self, window: int, words: int) -> "int | None":
        """Words of the word loop per chunk of the reduction (the kernel window x those words):
        all of them where the lanes hold the whole reduction; else the largest divisor
        whose chunk they hold, widened after each chunk (`widen_intrin`); None where that chunk
        would be too short to repay its widening."""
        if self.fits(window * words):
            return words
        chunk = max((d for d in range(1, words + 1) if words % d == 0 and self.fits(window * d)), default=0)
        return chunk if window * chunk >= MIN_CHUNK_WORDS else None

    def coefficient(self, i: int, j: int) -> int:
        """c_j 2^(i+j): the top weight plane is negative (two's complement) unless wbits is 1."""
        return -(2 ** (i + j)) if self.wbits > 1 and j == self.wbits - 1 else 2 ** (i + j)

    @property
    def _suffix(self) -> str:
        return f"a{self.abits}w{self.wbits}_{self.word}" + ("_udot" if self.dot else "")

    @property
    def update_intrin(self) -> str:
        return f"wrpn_neon_popcount_accumulate_{self._suffix}"

    @property
    def decode_intrin(self) -> str:
        return f"wrpn_neon_decode_counts_{self._suffix}"

    @property
    def widen_intrin(self) -> str:
        return f"wrpn_neon_widen_counts_{self._suffix}"


def narrow_accumulation(abits: int, wbits: int, word: str, dot: bool = False) -> "NarrowAccumulation | None":
    """The narrow accumulation for these bits and words, or None where the fold does not fit:
    its classes must fill the q register's lanes evenly, and a byte after the Horner sum (up to
    8 x (2^abits - 1)) must stay a byte (the uadalp folds go on in 16-bit lanes where a byte could
    not take another doubling: `byte_folds`; udot's folds must all stay bytes)."""
    if word not in ACCUMULATOR or (dot and word not in WEIGHED_WORDS):
        return None
    plan = NarrowAccumulation(abits, wbits, word, dot)
    if plan.weighs_activation_planes and word not in WEIGHED_WORDS:
        return None
    classes = len(plan.classes)
    if classes & (classes - 1) or classes * plan.lanes > plan.count_lanes:
        return None
    return None if MAX_BITS * plan.level_max * 2**plan.byte_folds > BYTE_MAX else plan


def _update_func(plan: NarrowAccumulation, implementation: bool) -> tirx.PrimFunc:
    """One reduction word for one q register of channels: C += plane_dot(A, W) as the computes
    write it (description), or folded into the 16-bit count lanes (implementation).
    A is the activation words of the planes [abits, 1], W the weights [wbits, 1, lanes]."""
    lanes, acc = plan.lanes, plan.accumulator
    with IRBuilder() as builder:
        with build_prim_func():
            a, w, c = T.arg("a", T.handle()), T.arg("w", T.handle()), T.arg("c", T.handle())
            # Both inputs are regions of larger buffers (planes are CW words apart).
            strides = {"strides": [T.int32(), T.int32()]} if implementation else {}
            w_strides = {"strides": [T.int32(), T.int32(), 1]} if implementation else {}
            A = T.match_buffer(a, (plan.abits, 1), plan.word, offset_factor=1, **strides)
            W = T.match_buffer(w, (plan.wbits, 1, lanes), plan.word, offset_factor=1, **w_strides)
            C = T.match_buffer(c, (lanes,), acc, offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0 : plan.abits, 0:1], W[0 : plan.wbits, 0:1, 0:lanes])
                T.writes(C[0:lanes])
                if implementation:
                    _fold_counts(plan, A, W, C)
                else:
                    with T.serial(0, lanes) as o:
                        with T.sblock("update"):
                            vo = T.axis.spatial(lanes, o)
                            T.reads(C[vo], A[0 : plan.abits, 0], W[0 : plan.wbits, 0, vo])
                            T.writes(C[vo])
                            activations = [A[i, 0] for i in range(plan.abits)]
                            weights = [W[j, 0, vo] for j in range(plan.wbits)]
                            T.buffer_store(C, C[vo] + _plane_dot(activations, weights, plan.wbits, acc), [vo])
    return builder.get()


def _neon(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(dtype, f"llvm.aarch64.neon.{name}", *args)


def _fold_counts(plan: NarrowAccumulation, A, W, C) -> None:
    """cnt per pair (weighed over the activation planes per weight plane where the plan says so),
    addp folds the classes together (byte k of the result: class k // (16/classes)), uadalp into
    the accumulator's 16-bit lanes (udot into its 32-bit lanes). Lane l then counts class
    l // (lanes_per_count x lanes) of channel l // lanes_per_count % lanes."""
    vector = f"{plan.word}x{plan.lanes}"
    bytes_ = f"uint8x{Q_BYTES}"
    def count(i: int, j: int):
        return tirx.popcount(T.reinterpret(bytes_, T.broadcast(A[i, 0], plan.lanes) & W.vload([j, 0, 0], vector)))

    if plan.weighs_activation_planes:
        counts = []
        for j in range(plan.wbits):
            weighed = count(plan.abits - 1, j)
            for i in reversed(range(plan.abits - 1)):
                weighed = weighed + weighed + count(i, j)
            counts.append(weighed)
    else:
        counts = [count(i, j) for i, j in plan.pairs]
    for _ in range(plan.byte_folds):
        counts = [_neon("addp", bytes_, counts[k], counts[k + 1]) for k in range(0, len(counts), 2)]
    if plan.dot:
        lanes32 = f"uint32x{plan.count_lanes}"
        previous = T.reinterpret(lanes32, C.vload([0], f"{plan.accumulator}x{plan.lanes}"))
        total = _neon("udot", lanes32, previous, counts[0], T.broadcast(T.uint8(1), Q_BYTES))
        T.buffer_store(C, T.reinterpret(f"{plan.accumulator}x{plan.lanes}", total), [T.ramp(0, 1, plan.lanes)])
        return
    lanes16 = f"uint16x{plan.count_lanes}"
    previous = T.reinterpret(lanes16, C.vload([0], f"{plan.accumulator}x{plan.lanes}"))
    if len(counts) == 1:
        total = previous + _neon("uaddlp", lanes16, counts[0])  # LLVM selects uadalp
    else:  # the last levels in 16-bit lanes: same lane order as byte folds would give
        counts = [_neon("uaddlp", lanes16, count) for count in counts]
        while len(counts) > 1:
            counts = [_neon("addp", lanes16, counts[k], counts[k + 1]) for k in range(0, len(counts), 2)]
        total = previous + counts[0]
    T.buffer_store(C, T.reinterpret(f"{plan.accumulator}x{plan.lanes}", total), [T.ramp(0, 1, plan.lanes)])


def _store_decoded(plan: NarrowAccumulation, accumulate: bool):
    """The write-back's decoding of one q register: the sum per channel of its classes' lanes times
    their coefficients (added to D where `accumulate`), unrolled with constant indices: the tile
    stays promotable to registers."""

    def store(S, D):
        for o in range(plan.lanes):
            decoded = _decoded_channel(plan, S, o)
            T.buffer_store(D, D[o] + decoded if accumulate else decoded, [o])

    return store


def _decoded_channel(plan: NarrowAccumulation, S, channel: int):
    """Sum over classes of coefficient x the class's lanes for this channel."""
    acc = plan.accumulator
    lanes_per_slot = plan.word_bits // plan.lane_bits
    total = None
    for p, (i, j) in enumerate(plan.classes):
        for part in range(plan.lanes_per_count):
            lane = (p * plan.lanes + channel) * plan.lanes_per_count + part
            shift = tirx.const(lane % lanes_per_slot * plan.lane_bits, acc)
            field = (S[lane // lanes_per_slot] >> shift) & tirx.const(plan.lane_max, acc)
            term = field * tirx.const(plan.coefficient(i, j), acc)
            total = term if total is None else total + term
    return total


def _register_all() -> None:
    for word in ACCUMULATOR:
        for abits in range(1, MAX_BITS + 1):
            for wbits in range(1, MAX_BITS + 1):
                for dot in (False, True):
                    plan = narrow_accumulation(abits, wbits, word, dot)
                    if plan is None:
                        continue
                    TensorIntrin.register(plan.update_intrin, _update_func(plan, False), _update_func(plan, True),
                                          override=True)
                    for intrin, accumulate in ((plan.decode_intrin, False), (plan.widen_intrin, True)):
                        TensorIntrin.register(intrin, writeback_func(plan.lanes, plan.accumulator, None, accumulate),
                                              writeback_func(plan.lanes, plan.accumulator,
                                                             _store_decoded(plan, accumulate), accumulate),
                                              override=True)


# At import: a tuning record's trace names these intrinsics, and replaying it needs them registered.
_register_all()


def pack_word(groups: list, plane: int):
    """staged_bitpack's word of one plane from its 64 level bytes (`groups`, q registers: the
    levels were narrowed by `fcvtzs`, `uzp1`): `ushr`, `and`, and `ushl` each byte's bit to its
    place in the byte (channel % 8), and three levels of `addp` (four ops) gather the 64 bytes into
    the word's 8."""
    bytes_ = f"uint8x{Q_BYTES}"
    position = T.ramp(T.uint8(0), T.uint8(1), Q_BYTES) & T.broadcast(T.uint8(7), Q_BYTES)
    bits = [((group >> T.broadcast(T.uint8(plane), Q_BYTES)) & T.broadcast(T.uint8(1), Q_BYTES)) << position
            for group in groups]
    # byte k of the folds: the sum (here the or) of bytes 8k..8k+7 of the 64.
    fold = _neon("addp", bytes_, _neon("addp", bytes_, bits[0], bits[1]), _neon("addp", bytes_, bits[2], bits[3]))
    fold = _neon("addp", bytes_, fold, fold)
    return tirx.Shuffle([T.reinterpret("uint64x2", fold)], [0])


def pack_columns(levels: list, plane: int, pixels: int) -> list:
    """staged_bitpack's words of one plane for a row's `pixels` (4 or 2) from one int32 vector per
    channel of the word (its levels at those pixels): per half word a chain of `sli` that inserts
    each channel's level, shifted right by the plane, at its bit position (each insert overwrites
    the bits above it, so only the plane's bit of every level remains; a partial half is masked),
    and `zip1`/`zip2` of the halves give the pixels' 64-bit words, two pixels a vector."""
    lanes = f"int32x{pixels}"
    halves = []
    for start in (0, 32):
        half = [level >> T.broadcast(T.int32(plane), pixels) if plane else level for level in levels[start:start + 32]]
        if not half:
            halves.append(T.broadcast(T.int32(0), pixels))
            continue
        # Chains of SLI_CHAIN channels, then merged pairwise by sli at their offsets: the same
        # bits, with a dependency depth of 7 + 2 instead of 31.
        parts = []
        for first in range(0, len(half), SLI_CHAIN):
            part = half[first]
            for bit in range(1, min(SLI_CHAIN, len(half) - first)):
                part = _neon("vsli", lanes, part, half[first + bit], T.int32(bit))
            parts.append((part, first))
        while len(parts) > 1:
            parts = [(_neon("vsli", lanes, low, high, T.int32(high_bit - low_bit)), low_bit)
                     if high_bit is not None else (low, low_bit)
                     for (low, low_bit), (high, high_bit) in zip(parts[::2], parts[1::2] + [(None, None)])]
        word = parts[0][0]
        if len(half) < 32:
            word = word & T.broadcast(T.int32((1 << len(half)) - 1), pixels)
        halves.append(word)
    # zip1 / zip2: the halves' lanes k side by side are pixel k's 64-bit word (little-endian).
    return [T.reinterpret("uint64x2",
                          tirx.Shuffle(halves, [lane for pixel in pair for lane in (pixel, pixel + pixels)]))
            for pair in (range(first, first + 2) for first in range(0, pixels, 2))]
