"""x86 AVX2 template for the lookup conv (`wrpn_tvm.ops.lut`): vpshufb table lookups added in
signed bytes, widened into the tile every few steps.

The register tile is (output pixels) x (vectors of 32 output channels). Per reduction step (one
kernel tap and group of channels) it broadcasts each pixel's 16-byte table into both halves of a
ymm, loads each vector's 32 codes, and adds one vpshufb per pixel and vector into a byte
accumulator. After `steps` steps (as many as the layer's table bound keeps exact in a signed byte,
`ops.lut.int8_steps`) the bytes are sign-extended into the tile, which stays in a local buffer
until the reduction ends:
  * into int16 where the whole reduction's sums fit (2/2 up to 3x3x1092 channels): two widening
    instructions per 32 channels instead of four, and half the tile's memory traffic. The first
    16 32-bit slots of a vector's tile hold its 32 int16 sums; the write-back decodes them, and
    the template applies the update and the decoding together or not at all;
  * into int32 otherwise.
The steps run as a loop, not unrolled: unrolled, LLVM computed each accumulator's whole sum before
the next one's and spilled every table and code vector it had loaded for the others (28x28x256
2/2: 61-88 GMAC/s against 94-111 looped, Emerald Rapids, 1 thread).

Registers: the accumulators, one table per pixel, one code vector per vector and a lookup result
must fit the 16 ymm (`fits`) for the default tile; MetaSchedule samples the tile (pixels and
vectors, any that divide the layer) and the loop order (vectors or pixels outermost). The
write-back drops the padded output channels and runs the fused epilogue on the tile. There is no
padding stage: the tables carry it. The tables pass has a schedule of its own (`schedule_tables`).
"""

from functools import lru_cache

from tvm import s_tir, tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops.lut import BOUND_ATTR, ENTRIES, LANES, LUT_CONV2D_RULE, STEPS_ATTR, STRIDE_ATTR, TABLES_NAME

from .common import (
    Decisions,
    attach_epilogue,
    block_rule,
    divisors,
    inline_around_kernels,
    largest_divisor_at_most,
    loop_extent,
    place_parallel,
    place_remaining_blocks,
    root_blocks,
    try_vectorize,
    writeback_func,
)

YMM_REGISTERS = 16
INT16_MAX = 2**15 - 1
DECODE_INTRIN = "wrpn_avx2_lut_decode_int16"
MAX_TILE_PIXELS = 8
MAX_TILE_VECTORS = 4
LOOP_ORDERS = ("vectors_outer", "pixels_outer")


def fits(pixels: int, vectors: int) -> bool:
    """Byte accumulators, a table per pixel, a code vector per vector and one lookup result."""
    return pixels * vectors + pixels + vectors + 1 <= YMM_REGISTERS


def _lut_func(pixels: int, vectors: int, steps: int, stride: int, int16: bool, implementation: bool) -> tirx.PrimFunc:
    """A[r, v, j] += sum_s T[stride * r, s, code] (code = C[v, 0, 0, s, j]) for a tile of `pixels`
    pixels (their tables `stride` apart) and `vectors` x 32 output channels over `steps` groups:
    as the conv block states it (a one-hot sum over the 16 entries), or as vpshufb lookups."""
    span = stride * (pixels - 1) + 1
    with IRBuilder() as builder:
        with build_prim_func():
            t, c, a = T.arg("t", T.handle()), T.arg("c", T.handle()), T.arg("a", T.handle())
            table_stride, code_strides = T.int32(), [T.int32(), T.int32(), T.int32()]
            acc_strides = [T.int32(), T.int32()]
            Tb = T.match_buffer(t, (span, steps, ENTRIES), "int8", offset_factor=1,
                                strides=[table_stride, ENTRIES, 1])
            Cd = T.match_buffer(c, (vectors, 1, 1, steps, LANES), "uint8", offset_factor=1,
                                strides=[*code_strides, LANES, 1])
            A = T.match_buffer(a, (pixels, vectors, LANES), "int32", offset_factor=1, scope="local",
                               strides=[*acc_strides, 1])
            with T.sblock("root"):
                T.reads(A[0:pixels, 0:vectors, 0:LANES], Cd[0:vectors, 0, 0, 0:steps, 0:LANES],
                        Tb[0:span, 0:steps, 0:ENTRIES])
                T.writes(A[0:pixels, 0:vectors, 0:LANES])
                if implementation:
                    _lookups(Tb, Cd, A, pixels, vectors, steps, stride, int16)
                else:
                    _one_hot_sum(Tb, Cd, A, pixels, vectors, steps, stride)
    return builder.get()


def _one_hot_sum(Tb, Cd, A, pixels, vectors, steps, stride):
    extents = {"r": pixels, "v": vectors, "j": LANES, "s": steps, "e": ENTRIES}
    kinds = {"r": "S", "v": "S", "j": "S", "s": "R", "e": "R"}
    # The tile keeps its unit loops, but the conv block's bindings drop their axes.
    kept = [name for name, extent in extents.items() if extent > 1]
    with T.grid(*extents.values()) as loops:
        loop_of = dict(zip(extents, loops))
        with T.sblock("update"):
            bound = T.axis.remap("".join(kinds[name] for name in kept), [loop_of[name] for name in kept])
            var = dict(zip(kept, list(bound) if len(kept) > 1 else [bound]))
            r, v, j, s, e = (var.get(name, 0) for name in extents)
            T.reads(A[r, v, j], Cd[v, 0, 0, s, j], Tb[r * stride, s, e])
            T.writes(A[r, v, j])
            hit = Cd[v, 0, 0, s, j] == T.Cast("uint8", e)
            T.buffer_store(A, A[r, v, j] + T.if_then_else(hit, Tb[r * stride, s, e].astype("int32"), 0), [r, v, j])


def _lookups(Tb, Cd, A, pixels, vectors, steps, stride, int16):
    # The byte accumulators live in a local buffer so that the steps can be a real loop (LLVM
    # promotes it to registers carried around the loop).
    bytes_ = T.alloc_buffer((pixels, vectors, LANES), "int8", scope="local")
    lanes = T.ramp(0, 1, LANES)
    for r in range(pixels):
        for v in range(vectors):
            T.buffer_store(bytes_, T.broadcast(T.int8(0), LANES), [r, v, lanes])
    with T.serial(0, steps) as s:
        tables = []
        for r in range(pixels):
            half = Tb.vload([r * stride, s, 0], f"int8x{ENTRIES}")
            tables.append(tirx.Shuffle([half, half], [tirx.IntImm("int32", i % ENTRIES) for i in range(LANES)]))
        codes = [T.reinterpret(f"int8x{LANES}", Cd.vload([v, 0, 0, s, 0], f"uint8x{LANES}")) for v in range(vectors)]
        for r in range(pixels):
            for v in range(vectors):
                found = T.call_llvm_pure_intrin(f"int8x{LANES}", "llvm.x86.avx2.pshuf.b", tables[r], codes[v])
                T.buffer_store(bytes_, bytes_.vload([r, v, 0], f"int8x{LANES}") + found, [r, v, lanes])
    for r in range(pixels):
        for v in range(vectors):
            found = bytes_.vload([r, v, 0], f"int8x{LANES}")
            if int16:
                half = T.ramp(0, 1, LANES // 2)
                sums = T.reinterpret(f"int16x{LANES}", A.vload([r, v, 0], f"int32x{LANES // 2}"))
                T.buffer_store(A, T.reinterpret(f"int32x{LANES // 2}", sums + T.Cast(f"int16x{LANES}", found)),
                               [r, v, half])
            else:
                T.buffer_store(A, A.vload([r, v, 0], f"int32x{LANES}") + T.Cast(f"int32x{LANES}", found), [r, v, lanes])


def _store_decoded(S, D):
    """The write-back of an int16 tile: its 32 sums (the first 16 32-bit slots) as int32."""
    sums = T.reinterpret(f"int16x{LANES}", S.vload([0], f"int32x{LANES // 2}"))
    T.buffer_store(D, T.Cast(f"int32x{LANES}", sums), [T.ramp(0, 1, LANES)])


@lru_cache(maxsize=None)
def intrin(pixels: int, vectors: int, steps: int, stride: int, int16: bool) -> str:
    """The registered intrinsic's name for this tile (registered on first use)."""
    name = f"wrpn_avx2_lut_{pixels}x{vectors}x{steps}_s{stride}{'_int16' if int16 else ''}"
    TensorIntrin.register(name, _lut_func(pixels, vectors, steps, stride, int16, False),
                          _lut_func(pixels, vectors, steps, stride, int16, True), override=True)
    return name


TensorIntrin.register(DECODE_INTRIN, writeback_func(LANES, "int32", None), writeback_func(LANES, "int32", _store_decoded),
                      override=True)


def has_lut_conv(sch: Schedule) -> bool:
    return any(block_rule(sch, block) == LUT_CONV2D_RULE for block in root_blocks(sch))


def default_tile(width: int, vectors: int) -> tuple[int, int]:
    """(pixels, vectors) per tile, each dividing its extent, that fit the registers: the most
    accumulators, then the most pixels (a table is a 16-byte broadcast, a code vector 32 bytes)."""
    tiles = [(p, v) for p in divisors(width) if p <= MAX_TILE_PIXELS
             for v in divisors(vectors) if v <= MAX_TILE_VECTORS and fits(p, v)]
    return max(tiles, key=lambda tile: (tile[0] * tile[1], tile[0]))


def _plan(sch: Schedule, block) -> dict:
    """What the intrinsics of a lookup conv block depend on: its steps between widenings, stride,
    int16 tile, and the extents its tile divides."""
    n, oh, ow, ov, j, kh, kw, g, e = sch.get_loops(block)
    annotations = sch.get(block).annotations
    most_steps, stride = int(annotations.get(STEPS_ATTR, 1)), int(annotations.get(STRIDE_ATTR, 1))
    table_bound = annotations.get(BOUND_ATTR)
    reduction = loop_extent(sch, kh) * loop_extent(sch, kw) * loop_extent(sch, g)
    return {"steps": largest_divisor_at_most(loop_extent(sch, g), most_steps), "stride": stride,
            "int16": table_bound is not None and reduction * int(table_bound) <= INT16_MAX,
            "width": loop_extent(sch, ow), "vectors": loop_extent(sch, ov)}


def register_tile_intrinsics(sch: Schedule) -> None:
    """Register the intrinsic of every tile the tuning rule can sample for the lookup convs of
    sch: a tuning database's traces name them, and replaying one (a build with the log, a resumed
    search, the confirmation) may happen in a process where the rule never ran."""
    for block in root_blocks(sch):
        if block_rule(sch, block) != LUT_CONV2D_RULE:
            continue
        plan = _plan(sch, block)
        for pixels in divisors(plan["width"]):
            for vectors in divisors(plan["vectors"]):
                if pixels <= MAX_TILE_PIXELS and vectors <= MAX_TILE_VECTORS:
                    intrin(pixels, vectors, plan["steps"], plan["stride"], plan["int16"])


def conv2d(sch: Schedule, block, tuning: bool, order: str = LOOP_ORDERS[0]) -> None:
    decisions = Decisions(sch, tuning)
    plan = _plan(sch, block)
    n, oh, ow, ov, j, kh, kw, g, e = sch.get_loops(block)
    g_outer, g_inner = sch.split(g, [None, plan["steps"]])
    width, vectors = plan["width"], plan["vectors"]
    pixels_default, vectors_default = default_tile(width, vectors)
    ow_outer, ow_inner = sch.split(ow, decisions.tile(ow, 2, MAX_TILE_PIXELS, [width // pixels_default, pixels_default]))
    ov_outer, ov_inner = sch.split(ov, decisions.tile(ov, 2, MAX_TILE_VECTORS,
                                                      [vectors // vectors_default, vectors_default]))
    pixels_tile, vectors_tile = loop_extent(sch, ow_inner), loop_extent(sch, ov_inner)
    outer = [ov_outer, n, oh, ow_outer] if order == "vectors_outer" else [n, oh, ow_outer, ov_outer]
    sch.reorder(*outer, kh, kw, g_outer, ow_inner, ov_inner, j, g_inner, e)
    tile = sch.fuse(*outer)
    sch.parallel(tile)
    # No unrolling under the tile (the steps must stay a loop, see above). Annotated, the tile loop
    # is also one MetaSchedule's RewriteParallelVectorizeUnroll leaves alone: without, it refused
    # every candidate of the rule.
    sch.annotate(tile, "pragma_auto_unroll_max_step", 0)
    sch.annotate(tile, "pragma_unroll_explicit", 1)
    writeback = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(writeback, tile, preserve_unit_loops=True)
    *writeback_tile, writeback_lanes = sch.get_loops(writeback)[1:]
    attach_epilogue(sch, writeback, tile)
    if plan["int16"]:
        # The int16 update and this decoding are applied together or not at all.
        sch.tensorize(writeback_lanes, DECODE_INTRIN)
        if tuning:
            sch.blockize(writeback_tile[0])
    else:
        try_vectorize(sch, writeback_lanes)
    init = sch.decompose_reduction(block, kh)
    try_vectorize(sch, sch.get_loops(init)[-1])
    init_loops = sch.get_loops(init)
    sch.tensorize(ow_inner, intrin(pixels_tile, vectors_tile, plan["steps"], plan["stride"], plan["int16"]))
    if tuning:
        # As in the int8 template: RewriteParallelVectorizeUnroll rejects decomposed, tensorized
        # blocks at the top level; blocks inside a block are out of its reach.
        sch.blockize(init_loops[1])


def conv2d_rule(sch: Schedule, block) -> list[Schedule]:
    """The MetaSchedule custom rule: the tile (pixels x vectors of 32 channels) sampled, one design
    space per loop order."""
    spaces = []
    for order in LOOP_ORDERS:
        space = sch.copy()
        conv2d(space, block, tuning=True, order=order)
        spaces.append(space)
    return spaces


def has_lut_tables(sch: Schedule) -> bool:
    return any(sch.get(block).name_hint.startswith(TABLES_NAME) for block in root_blocks(sch))


def schedule_tables(sch: Schedule) -> None:
    """The tables pass, with the epilogue and glue fused before it: parallel over image rows; per
    pixel, the levels of all its channels first (vectorized over channels, into a local buffer),
    then its tables, the 16 entries of one as an int16 vector. Left to the generic schedule the
    fused epilogue ran once per table entry, and the pass took a third of ResNet-18 2x 2/2's time;
    computed per table (scalar), 15% of it."""
    for table in [b for b in root_blocks(sch) if sch.get(b).name_hint.startswith(TABLES_NAME)]:
        levels = sch.get_producers(table)
        # The level computation keeps one block (the last before the tables); the rest inlines into it.
        kept = {sch.get(b).name_hint for b in levels}
        for block in reversed(root_blocks(sch)):
            name = sch.get(block).name_hint
            if not name.startswith(TABLES_NAME) and name not in kept:
                try:
                    sch.compute_inline(block)
                except s_tir.ScheduleError:
                    pass
        n, h, w, g, i = sch.get_loops(table)
        sch.parallel(sch.fuse(n, h))
        sch.vectorize(i)
        for producer in sch.get_producers(table):
            if sch.get(producer).name_hint in kept:
                sch.compute_at(producer, w, preserve_unit_loops=True)
                try_vectorize(sch, sch.get_loops(producer)[-3])
    others = [sch.get(b).name_hint for b in root_blocks(sch) if not sch.get(b).name_hint.startswith(TABLES_NAME)]
    place_remaining_blocks(sch, others, place_parallel)


def schedule_function(sch: Schedule, target=None) -> None:
    """Untuned schedule of a PrimFunc holding lookup conv(s) and their fused neighbours."""
    others = inline_around_kernels(sch, LUT_CONV2D_RULE)
    for block in [b for b in root_blocks(sch) if block_rule(sch, b) == LUT_CONV2D_RULE]:
        conv2d(sch, block, tuning=False)
    place_remaining_blocks(sch, others, place_parallel)
