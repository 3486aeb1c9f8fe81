"""AMX template for the int8-dot conv (`wrpn_tvm.ops.int8_dot`) on x86 CPUs with AMX-INT8 (Intel
Sapphire Rapids and later): the VNNI template's compute and layouts, each reduction step done by
one tdpbusd per pair of tiles instead of one vpdpbusd per pixel and weight block.

A tdpbusd multiplies a tile of M pixels x 64 input channels (uint8 levels: M rows of 64 bytes, read
straight from the padded NHWC input with the conv's stride) by a tile of 64 input channels x 16
output channels (int8: 16 rows of the weight layout's [16, 4] blocks, which the VNNI layout already
stores contiguously) into M x 16 int32 sums: 1024 MACs per pixel row where vpdpbusd does 64.
An A tile holds the pixels of one output row, or of several short rows (`ops.int8_dot.AmxTile`:
tile rows one stride apart run on through the padding columns into the next row). The register
tile is R A tiles x NB weight blocks: R A tiles, NB B tiles and R * NB accumulator tiles of AMX's
8, the accumulators staying in tile registers over the whole reduction (kh, kw, channels / 64);
then they are stored to a local tile the epilogue reads, as in the VNNI template. Three tensor
intrinsics make it: the init (load this kernel's tile configuration where the thread's differs,
zero the accumulators), the update (load the A and B tiles, multiply) and the store. AMX state is per thread and the OS
grants it per process (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM)): the init asks for it where this
thread's tile configuration is not in use yet (XGETBV(1)), so a library needs nothing from whoever
loads it.

Applies to layers whose input channels fill whole 64-byte tile rows (padded channels a multiple
of 64) and whose weights come in the AVX-512 layout (16 output channels a block); other int8
convs keep the VNNI template.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, reduce

import numpy as np
from tvm import tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from wrpn_tvm.ops.int8_dot import (AMX_ROW_CHANNELS, INT8_CONV2D_RULE, REDUCE_BLOCK, AmxTile, Int8Layout, amx_row_pixels,
                                   amx_tile, has_amx)

from .common import (
    Decisions,
    attach_epilogue,
    block_rule,
    divisors,
    inline_tile_copy,
    loop_extent,
    pad_whole_input,
    root_blocks,
    try_vectorize,
)

TILES = 8
ROW_BYTES = AMX_ROW_CHANNELS  # one tile row: 64 uint8 channels of a pixel, or 16 int32 sums
STEP_GROUPS = ROW_BYTES // REDUCE_BLOCK  # 4-channel groups per tdpbusd (the B tile's 16 rows)
OUT_BLOCK = 16  # output channels per B tile: the AVX-512 int8 layout's block
MAX_TILE_ROWS = 4
MAX_TILE_BLOCKS = 4
UNROLL_STEPS = [0, 16, 64]
# Linux x86-64: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) asks for AMX tile data state.
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
XINUSE_TILECFG = 1 << 17  # XGETBV(1): the tile configuration is in use in this thread


available = has_amx  # whether a target has AMX-INT8 (the int8 layout says it too: `Int8Layout.amx`)


def fits(sch: Schedule, block) -> bool:
    """Whether the int8 conv block has the AVX-512 layout and whole 64-channel tile rows."""
    info = sch.get(block)
    if int(info.writes[0].source.shape[-1]) != OUT_BLOCK:
        return False
    data = [r.source for r in info.reads if len(r.source.shape) == 4]
    if str(data[0].dtype) != "uint8":
        return False
    *_, c4, _ = sch.get_loops(block)
    return loop_extent(sch, c4) % STEP_GROUPS == 0


def tile_counts(rows: int, blocks: int) -> bool:
    """Whether R rows x NB blocks fit AMX's tile registers (R A, NB B and R * NB accumulator tiles)."""
    return rows + blocks + rows * blocks <= TILES


def default_tile(tile: AmxTile, blocks: int) -> tuple[int, int]:
    """(A tiles, weight blocks) of the register tile: the most accumulator tiles (each tdpbusd's
    operands are loaded once per R * NB of them), squarest first."""
    tiles = [(r, b) for r in divisors(tile.computed_rows // tile.rows) if r <= MAX_TILE_ROWS for b in divisors(blocks)
             if b <= MAX_TILE_BLOCKS and tile_counts(r, b)]
    return max(tiles, key=lambda t: (t[0] * t[1], -abs(t[0] - t[1])))


@dataclass(frozen=True)
class RegisterTile:
    """One step of the conv's tiled loop nest: `a_tiles` A tiles of `layer.rows` output rows each
    (several where short rows share a tile: `ops.int8_dot.AmxTile`) times `blocks` weight blocks,
    an accumulator tile for each pair."""

    a_tiles: int
    layer: AmxTile
    blocks: int

    @property
    def out_rows(self) -> int:
        return self.a_tiles * self.layer.rows

    @property
    def name(self) -> str:
        shared = f"r{self.layer.rows}w{self.layer.padded_width}" if self.layer.rows > 1 else ""
        return f"{self.a_tiles}x{shared}{self.layer.pixels}x{self.blocks}"

    def accumulator(self, a: int, b: int) -> int:
        """Tile register numbers: accumulators first (row-major), then the A tiles, then the B tiles."""
        return a * self.blocks + b

    def a(self, a: int) -> int:
        return self.a_tiles * self.blocks + a

    def b(self, b: int) -> int:
        return self.a_tiles * self.blocks + self.a_tiles + b


def _tile_op(name: str, *args):
    return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


def _tile(number: int):
    return tirx.const(number, "int8")


def tile_config(tile: RegisterTile) -> bytes:
    """The 64-byte tile configuration (palette 1; A tiles and accumulators `layer.tile_rows` rows,
    B tiles 16; every row 64 bytes)."""
    config = bytearray(64)
    config[0] = 1  # palette 1
    pixel_rows = tile.layer.tile_rows
    rows = {tile.accumulator(a, b): pixel_rows for a in range(tile.a_tiles) for b in range(tile.blocks)}
    rows.update({tile.a(a): pixel_rows for a in range(tile.a_tiles)})
    rows.update({tile.b(b): STEP_GROUPS for b in range(tile.blocks)})
    for number, count in rows.items():
        config[16 + 2 * number] = ROW_BYTES  # colsb, a little-endian uint16
        config[48 + number] = count
    return bytes(config)


def _configure_tiles(tile: RegisterTile) -> None:
    """Ask for AMX state where this thread has none configured, then load the tile configuration
    where the thread's is another: a tile's configuration costs about 8% of a tile's time
    (`benchmarks/amx_tile_costs.c`), reading it back and comparing almost nothing, and
    consecutive tiles of a thread mostly run one kernel."""
    # uint32: an int32 constant is widened with the indices of a Relax-built function (int64 there).
    in_use = T.call_llvm_intrin("int64", "llvm.x86.xgetbv", tirx.const(1, "uint32"))
    with T.If(tirx.bitwise_and(in_use, tirx.const(XINUSE_TILECFG, "int64")) == tirx.const(0, "int64")):
        with T.Then():
            T.evaluate(T.call_extern("int64", "syscall", tirx.const(SYS_ARCH_PRCTL, "int64"),
                                     tirx.const(ARCH_REQ_XCOMP_PERM, "int64"), tirx.const(XFEATURE_XTILEDATA, "int64")))
    words = np.frombuffer(tile_config(tile), dtype="<u8")
    wanted = T.alloc_buffer((len(words),), "uint64", scope="local")
    current = T.alloc_buffer((len(words),), "uint64", scope="local")
    for i, word in enumerate(words):
        T.buffer_store(wanted, tirx.const(int(word), "uint64"), [i])
    # Zeros where no configuration is in use, so then it is loaded too.
    _tile_op("sttilecfg", T.address_of(current[0]))
    differs = reduce(tirx.Or, [current[i] != wanted[i] for i in range(len(words))])
    with T.If(differs):
        with T.Then():
            _tile_op("ldtilecfg", T.address_of(wanted[0]))


@contextmanager
def _tile_block(name: str, dims: list[tuple[str, int, str]]):
    """The description's loop nest and block over the tile's dims (name, extent, "S" or "R") from
    the first of extent above 1 inwards, as the scheduled nest has them where tensorize starts
    (`_first_wide_loop`): yields each dim's block axis; unit dims have none (their index is 0),
    as in the scheduled block."""
    first = next(i for i, (_, extent, _) in enumerate(dims) if extent > 1)
    nest = dims[first:]
    with T.grid(*(extent for _, extent, _ in nest)) as loops:
        with T.sblock(name):
            wide = [(dim, kind, loop) for (dim, extent, kind), loop in zip(nest, loops) if extent > 1]
            remapped = T.axis.remap("".join(kind for _, kind, _ in wide), [loop for *_, loop in wide])
            axes = dict.fromkeys((dim for dim, _, _ in dims), 0)
            axes.update(zip((dim for dim, _, _ in wide), remapped))
            yield axes


def _accumulators(c, tile: RegisterTile, strided: bool = False):
    """A local [out rows, pixels, blocks, 16] int32 tile (`strided`: its strides left to the match)."""
    strides = [T.int32(), T.int32(), T.int32(), 1] if strided else None
    return T.match_buffer(c, (tile.out_rows, tile.layer.pixels, tile.blocks, OUT_BLOCK), "int32", offset_factor=1,
                          scope="local", strides=strides)


def _spatial_dims(tile: RegisterTile) -> list[tuple[str, int, str]]:
    return [("r", tile.out_rows, "S"), ("p", tile.layer.pixels, "S"), ("b", tile.blocks, "S"), ("o", OUT_BLOCK, "S")]


def _whole(tile: RegisterTile):
    return (slice(0, tile.out_rows), slice(0, tile.layer.pixels), slice(0, tile.blocks), slice(0, OUT_BLOCK))


def _zero_func(tile: RegisterTile, implement: bool) -> tirx.PrimFunc:
    """C[r, p, b, o] = 0 over the accumulator tiles (the conv's init block); implemented: configure
    the tiles, zero the accumulators."""
    with IRBuilder() as builder:
        with build_prim_func():
            C = _accumulators(T.arg("c", T.handle()), tile)
            with T.sblock("root"):
                T.reads()
                T.writes(C[_whole(tile)])
                if implement:
                    _configure_tiles(tile)
                    for a in range(tile.a_tiles):
                        for b in range(tile.blocks):
                            _tile_op("tilezero", _tile(tile.accumulator(a, b)))
                else:
                    with _tile_block("init", _spatial_dims(tile)) as axes:
                        vr, vp, vb, vo = (axes[dim] for dim in "rpbo")
                        T.reads()
                        T.writes(C[vr, vp, vb, vo])
                        T.buffer_store(C, tirx.const(0, "int32"), [vr, vp, vb, vo])
    return builder.get()


def _update_func(tile: RegisterTile, stride_h: int, stride_w: int, implement: bool) -> tirx.PrimFunc:
    """C[r, p, b, o] += sum over 64 channels of A[r * stride_h, p * stride_w, c] * B[b, c / 4, o, c % 4]
    (one step of the conv's reduction for the whole register tile); implemented: load the A tiles
    (pixel rows `stride_w` pixels apart, so that with rows shared a tile row's pixels follow on into
    the next input rows `stride_h` below) and the B tiles, one tdpbusd per accumulator tile."""
    rows, pixels = tile.out_rows, tile.layer.pixels
    a_rows, a_pixels = (rows - 1) * stride_h + 1, (pixels - 1) * stride_w + 1
    with IRBuilder() as builder:
        with build_prim_func():
            a, b_handle, c = T.arg("a", T.handle()), T.arg("b", T.handle()), T.arg("c", T.handle())
            A = T.match_buffer(a, (a_rows, a_pixels, ROW_BYTES), "uint8", offset_factor=1,
                               strides=[T.int32(), T.int32(), 1])
            # The weight layout's [blocks, KH, KW, C / 4, 16, 4] at one (kh, kw): tensorize drops only
            # leading unit dimensions.
            B = T.match_buffer(b_handle, (tile.blocks, 1, 1, STEP_GROUPS, OUT_BLOCK, REDUCE_BLOCK), "int8",
                               offset_factor=1,
                               strides=[T.int32(), T.int32(), T.int32(), OUT_BLOCK * REDUCE_BLOCK, REDUCE_BLOCK, 1])
            C = _accumulators(c, tile)
            with T.sblock("root"):
                T.reads(C[_whole(tile)], A[0:a_rows, 0:a_pixels, 0:ROW_BYTES],
                        B[0:tile.blocks, 0:1, 0:1, 0:STEP_GROUPS, 0:OUT_BLOCK, 0:REDUCE_BLOCK])
                T.writes(C[_whole(tile)])
                if implement:
                    # With rows shared, the input's rows must lie `padded_width` pixels apart: they
                    # do in the whole padded input the template computes first (`pad_whole_input`).
                    pixel_bytes = tirx.Cast("int64", A.strides[1] * stride_w)
                    for r in range(tile.a_tiles):
                        _tile_op("tileloadd64", _tile(tile.a(r)), T.address_of(A[r * tile.layer.rows * stride_h, 0, 0]),
                                 pixel_bytes)
                    for b in range(tile.blocks):
                        _tile_op("tileloadd64", _tile(tile.b(b)), T.address_of(B[b, 0, 0, 0, 0, 0]),
                                 tirx.const(OUT_BLOCK * REDUCE_BLOCK, "int64"))
                    for r in range(tile.a_tiles):
                        for b in range(tile.blocks):
                            _tile_op("tdpbusd", _tile(tile.accumulator(r, b)), _tile(tile.a(r)), _tile(tile.b(b)))
                else:
                    dims = _spatial_dims(tile) + [("g", STEP_GROUPS, "R"), ("k", REDUCE_BLOCK, "R")]
                    with _tile_block("update", dims) as axes:
                        vr, vp, vb, vo, vg, vk = (axes[dim] for dim in "rpbogk")
                        T.reads(C[vr, vp, vb, vo], A[vr * stride_h, vp * stride_w, vg * REDUCE_BLOCK + vk],
                                B[vb, 0, 0, vg, vo, vk])
                        T.writes(C[vr, vp, vb, vo])
                        product = A[vr * stride_h, vp * stride_w, vg * REDUCE_BLOCK + vk].astype("int32") * \
                            B[vb, 0, 0, vg, vo, vk].astype("int32")
                        T.buffer_store(C, C[vr, vp, vb, vo] + product, [vr, vp, vb, vo])
    return builder.get()


def _store_func(tile: RegisterTile, implement: bool) -> tirx.PrimFunc:
    """D[r, p, b, o] = C[r, p, b, o]: the accumulator tiles into the local tile the epilogue reads
    (with rows shared, its rows `padded_width` pixels apart: `conv2d` aligns it so)."""
    with IRBuilder() as builder:
        with build_prim_func():
            C = _accumulators(T.arg("c", T.handle()), tile)
            D = _accumulators(T.arg("d", T.handle()), tile, strided=True)
            with T.sblock("root"):
                T.reads(C[_whole(tile)])
                T.writes(D[_whole(tile)])
                if implement:
                    pixel_bytes = tirx.Cast("int64", D.strides[1] * 4)
                    for r in range(tile.a_tiles):
                        for b in range(tile.blocks):
                            _tile_op("tilestored64", _tile(tile.accumulator(r, b)),
                                     T.address_of(D[r * tile.layer.rows, 0, b, 0]), pixel_bytes)
                else:
                    with _tile_block("store", _spatial_dims(tile)) as axes:
                        vr, vp, vb, vo = (axes[dim] for dim in "rpbo")
                        T.reads(C[vr, vp, vb, vo])
                        T.writes(D[vr, vp, vb, vo])
                        T.buffer_store(D, C[vr, vp, vb, vo], [vr, vp, vb, vo])
    return builder.get()


@lru_cache(maxsize=None)
def intrinsics(tile: RegisterTile, stride_h: int, stride_w: int) -> tuple[str, str, str]:
    """(zero, update, store) intrinsic names for this register tile, registered on first use."""
    names = (f"wrpn_amx_zero_{tile.name}", f"wrpn_amx_update_{tile.name}_s{stride_h}x{stride_w}",
             f"wrpn_amx_store_{tile.name}")
    TensorIntrin.register(names[0], _zero_func(tile, False), _zero_func(tile, True), override=True)
    TensorIntrin.register(names[1], _update_func(tile, stride_h, stride_w, False),
                          _update_func(tile, stride_h, stride_w, True), override=True)
    TensorIntrin.register(names[2], _store_func(tile, False), _store_func(tile, True), override=True)
    return names


def _data(sch: Schedule, block):
    """The conv block's read of its (padded) NHWC input."""
    return next(r for r in sch.get(block).reads if len(r.source.shape) == 4)


def _strides(sch: Schedule, block) -> tuple[int, int]:
    """(stride_h, stride_w) of the conv block: the coefficients of oh and ow in its input's indices."""
    from tvm.sym import detect_linear_equation

    data = _data(sch, block)
    _, oh_var, ow_var = (iv.var for iv in sch.get(block).iter_vars[:3])
    return (int(detect_linear_equation(data.region[1].min, [oh_var])[0]),
            int(detect_linear_equation(data.region[2].min, [ow_var])[0]))


def layer_tile(sch: Schedule, block) -> AmxTile:
    """The conv block's AMX tiling (`ops.int8_dot.amx_tile`), rows shared only where the compute
    has the rows that takes (`ops.int8_conv2d` with an AMX layout computes them)."""
    _, oh, ow, _, _, _, _, c4, ci = sch.get_loops(block)
    rows, width = loop_extent(sch, oh), loop_extent(sch, ow)
    padded_width = int(_data(sch, block).source.shape[2])
    channels = loop_extent(sch, c4) * loop_extent(sch, ci)
    tile = amx_tile(channels, rows, width, padded_width, _strides(sch, block), Int8Layout(OUT_BLOCK))
    if tile.computed_rows != rows:
        return AmxTile(1, amx_row_pixels(width), padded_width, rows, width)
    return tile


def register_tile(sch: Schedule, block) -> RegisterTile:
    """The block's register tile: its layer tiling and `default_tile`'s A tiles and weight blocks."""
    _, _, _, ob, *_ = sch.get_loops(block)
    tile = layer_tile(sch, block)
    a_tiles, blocks = default_tile(tile, loop_extent(sch, ob))
    return RegisterTile(a_tiles, tile, blocks)


def tile_intrinsics(sch: Schedule, block) -> tuple[str, str, str]:
    """The (zero, update, store) intrinsics of the block's default tile, registered."""
    return intrinsics(register_tile(sch, block), *_strides(sch, block))


def _tiled_convs(sch: Schedule) -> list:
    """The function's int8 conv blocks that AMX tiles run (on a target that has them)."""
    return [block for block in root_blocks(sch) if block_rule(sch, block) == INT8_CONV2D_RULE and fits(sch, block)]


def holds_tiled_conv(mod) -> bool:
    return bool(_tiled_convs(Schedule(mod)))


def register_replay_intrinsics(sch: Schedule) -> None:
    """Register the intrinsics the AMX tiles of the function's int8 convs name, so that a tuning
    record of them replays in any process."""
    for block in _tiled_convs(sch):
        tile_intrinsics(sch, block)


def conv2d(sch: Schedule, block, tuning: bool, order: str) -> None:
    """Schedule one int8 conv block (`fits`) on AMX tiles; `order`: the VNNI template's loop orders
    (weight blocks or pixel tiles outermost)."""
    decisions = Decisions(sch, tuning)
    # Fixed when tuning too: the tile shape is in the intrinsics' names, which MetaSchedule's trace
    # replays as they are. Tuning chooses the loop order (a design space each) and the unrolling.
    tile = register_tile(sch, block)
    zero, update, store = intrinsics(tile, *_strides(sch, block))
    n, oh, ow, ob, oi, kh, kw, c4, ci = sch.get_loops(block)
    c4_outer, c4_inner = sch.split(c4, [None, STEP_GROUPS])
    oh_outer, oh_inner = sch.split(oh, [None, tile.out_rows])
    ow_outer, ow_inner = sch.split(ow, [None, tile.layer.pixels])
    ob_outer, ob_inner = sch.split(ob, [None, tile.blocks])
    pixel_loops = [n, oh_outer, ow_outer]
    outer = [ob_outer, *pixel_loops] if order == "blocks_outer" else [*pixel_loops, ob_outer]
    sch.reorder(*outer, kh, kw, c4_outer, oh_inner, ow_inner, ob_inner, oi, c4_inner, ci)
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    sch.annotate(fused, "pragma_auto_unroll_max_step", decisions.choice(UNROLL_STEPS, default=0))
    sch.annotate(fused, "pragma_unroll_explicit", 1)
    pad_whole_input(sch, block)
    # The conv accumulates into `accumulators` (tile registers: only the intrinsics touch them),
    # stored once per tile into `local`, which the write-back and epilogue read.
    writeback = sch.cache_write(block, 0, "local")
    store_block = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(store_block, fused, preserve_unit_loops=True)
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    _, *_, writeback_lanes = sch.get_loops(writeback)
    attach_epilogue(sch, writeback, fused)
    try_vectorize(sch, writeback_lanes)
    inline_tile_copy(sch, writeback, fused)
    store_name = sch.get(store_block).name_hint
    sch.tensorize(_first_wide_loop(sch, sch.get_loops(store_block)[-4:]), store)
    if tile.layer.rows > 1:
        # Shared rows: the store writes an accumulator tile's rows `padded_width` pixels apart (on
        # the tensorized block: tensorize keeps no annotation of the block it replaces).
        sch.storage_align(sch.get_sblock(f"{store_name}_o"), 0, axis=1,
                          factor=tile.layer.padded_width * tile.blocks * OUT_BLOCK, offset=0)
    init = sch.decompose_reduction(block, kh)
    sch.tensorize(_first_wide_loop(sch, sch.get_loops(init)[-4:]), zero)
    sch.tensorize(_first_wide_loop(sch, [oh_inner, ow_inner, ob_inner, oi]), update)


def _first_wide_loop(sch: Schedule, tile_loops: list):
    """Where an intrinsic's description starts: the tile's first loop of extent above 1 (its
    output-channel loop, 16, at the latest)."""
    return next(loop for loop in tile_loops if loop_extent(sch, loop) > 1)
