"""The next tile's weights prefetched while a tile computes.

A CPU template that takes channel tiles outermost reuses a tile's weights over the consecutive
iterations of its parallel loop that compute the tile's pixels, and reads them from L3 on the
first of those. Where the weights do not stay in the core's L2 from one call to the next (ResNet-18
2x's 7x7 stage: 2.4 MB per conv, another conv's weights at every call), that first pass waits on a
36 KB stream in 4 KB pages, which the hardware prefetcher restarts at every page: on an AMX Xeon
(2 threads, weights flushed before each call) the 7x7x1024 2/2 conv ran at 68% of the popcount bound,
against 89% for the 28x28 layer whose weights fit in L2 (benchmarks/results/shift_groups_xeon_amx.md).

The templates mark that loop with ANNOTATION (its value: the weight's position among the
function's parameters). `PrefetchNextTile`, run on the scheduled TIR before TVM's lowering, reads
off the loop nest how many consecutive iterations share one tile of weights and where the next
tile starts, and spreads the next tile over them: each iteration prefetches its share of the next
tile's cache lines into L2 before its reduction. The same conv then ran at 84%, unchanged with warm
caches; ResNet-18 2x 2/2's bit-serial convs went from 83% to 89% of the bound in the model.
Prefetches sit outside the reduction loops on purpose: a call inside them keeps LLVM from holding
the accumulators in registers. A prefetch never faults (x86 `prefetcht1`, ARM `prfm`), and the
last tile of the loop prefetches nothing.
"""

import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import SBlockRealize, Schedule
from tvm.sym.analyzer import Analyzer

ANNOTATION = "wrpn_prefetch_weights"
LINE_BYTES = 64
MAX_PERIOD = 256  # iterations looked at for the next tile: a tile reused longer needs no prefetch
_READ, _L2_LOCALITY, _DATA_CACHE = 0, 2, 1  # llvm.prefetch's rw, locality and cache type


def mark(sch: Schedule, loop, weight: tirx.Buffer) -> None:
    """Mark `loop` (a parallel tile loop) to prefetch `weight`, where it is a parameter of the function."""
    for index, param in enumerate(sch.mod["main"].params):
        if param.same_as(weight):  # a buffer parameter is its buffer
            sch.annotate(loop, ANNOTATION, index)
            return


def _substitute(expr, values: dict):
    return tvm_ffi.structural_map(expr, (tirx.Var, lambda var: values.get(var, var)))


def _weight_regions(loop: tirx.For, weight: tirx.Buffer) -> list:
    """(mins, extents, loops) of each read of `weight` inside `loop`'s body: the read region in
    loop variables (block variables replaced by their bindings) and the loops around it in the body."""
    found = []

    def visit(stmt, bindings: dict, loops: dict):
        if isinstance(stmt, tirx.For):
            visit(stmt.body, bindings, {**loops, stmt.loop_var: tvm.ir.Range.from_min_extent(stmt.min, stmt.extent)})
        elif isinstance(stmt, SBlockRealize):
            block = stmt.block
            inner = {**bindings, **{iv.var: _substitute(value, bindings)
                                    for iv, value in zip(block.iter_vars, stmt.iter_values)}}
            for read in block.reads:
                if read.source.same_as(weight):
                    found.append(([_substitute(r.min, inner) for r in read.region],
                                  [_substitute(r.extent, inner) for r in read.region], loops))
            visit(block.body, inner, loops)
        elif isinstance(stmt, tirx.SeqStmt):
            for part in stmt.seq:
                visit(part, bindings, loops)
        elif isinstance(stmt, tirx.IfThenElse):
            visit(stmt.then_case, bindings, loops)
            if stmt.else_case is not None:
                visit(stmt.else_case, bindings, loops)
        elif hasattr(stmt, "body"):
            visit(stmt.body, bindings, loops)

    visit(loop.body, {}, {})
    return found


def _strides(buffer: tirx.Buffer) -> list[int]:
    strides, step = [], 1
    for extent in reversed(buffer.shape):
        strides.append(step)
        step *= int(extent)
    return strides[::-1]


def _elements_per_line(weight: tirx.Buffer) -> int:
    return LINE_BYTES * 8 // tvm.DataType(weight.dtype).bits


def _dims_within_a_line(weight: tirx.Buffer) -> int:
    """How many of the weight's innermost dimensions one cache line holds whole."""
    count, size = 0, 1
    while count < len(weight.shape) and size * int(weight.shape[-1 - count]) <= _elements_per_line(weight):
        size *= int(weight.shape[-1 - count])
        count += 1
    return count


def _flat_span(regions: list, weight: tirx.Buffer, loop_var, iteration: int) -> "tuple[int, int] | None":
    """The first and last element of the cache lines of the weights that iteration `iteration` of
    the loop reads, or None where those lines are not one contiguous run (a prefetch of the span
    would fetch the lines between). The innermost dimensions that fit in a line count whole: a tile
    of 8 of a 16-channel block's channels reads all its lines."""
    shape, strides = [int(extent) for extent in weight.shape], _strides(weight)
    within_line = _dims_within_a_line(weight)
    first, last, boxes = None, None, []
    for mins, extents, loops in regions:
        analyzer = Analyzer()
        analyzer.bind(loop_var, tirx.IntImm(loop_var.ty.dtype, iteration))
        for var, domain in loops.items():
            analyzer.bind(var, domain)
        lows = [analyzer.const_int_bound(m).min_value for m in mins]
        highs = [analyzer.const_int_bound(m + e - 1).max_value for m, e in zip(mins, extents)]
        for d in range(len(shape) - within_line, len(shape)):
            lows[d], highs[d] = 0, shape[d] - 1
        low, high = sum(l * s for l, s in zip(lows, strides)), sum(h * s for h, s in zip(highs, strides))
        elements = 1
        for l, h in zip(lows, highs):
            elements *= h - l + 1
        boxes.append((low, high))
        if high - low + 1 != elements:
            return None
        first = low if first is None else min(first, low)
        last = high if last is None else max(last, high)
    if any(box != (first, last) for box in boxes):
        return None  # reads of different runs: not one tile
    return first, last


def _tile_start(regions: list, weight: tirx.Buffer):
    """The flat offset of the first line of the weights an iteration reads, in the loop's variable:
    the first read's region at the start of the loops inside the iteration, the dimensions within a
    line at 0."""
    mins, _, loops = regions[0]
    at_start = {var: domain.min for var, domain in loops.items()}
    outer = len(weight.shape) - _dims_within_a_line(weight)
    return sum(_substitute(m, at_start) * s for m, s in list(zip(mins, _strides(weight)))[:outer])


def _evaluate(expr, loop_var, iteration: int) -> int:
    return int(Analyzer().simplify(_substitute(expr, {loop_var: tirx.IntImm(loop_var.ty.dtype, iteration)})))


def _prefetches(loop: tirx.For, weight: tirx.Buffer):
    """The statement that prefetches this iteration's share of the next tile, or None where the
    loop holds a single tile or its tiles are not laid out as the prefetch assumes."""
    regions = _weight_regions(loop, weight)
    extent = int(loop.extent)
    if not regions or int(loop.min) != 0:
        return None
    var = loop.loop_var
    spans = {}

    def span(iteration):
        if iteration not in spans:
            spans[iteration] = _flat_span(regions, weight, var, iteration)
        return spans[iteration]

    if span(0) is None:
        return None
    period = next((i for i in range(1, min(extent, MAX_PERIOD + 1)) if span(i) != span(0)), None)
    if period is None:
        return None  # one tile for the whole loop, or one read so often that its first pass does not matter
    start = _tile_start(regions, weight)
    # Tiles of `period` iterations from 0, each starting where its region does.
    checks = [i for i in (0, period - 1, period, extent - 1) if i < extent]
    if any(span(i) is None or span(i) != span(i // period * period) or _evaluate(start, var, i) != span(i)[0]
           for i in checks):
        return None
    elements_per_line = _elements_per_line(weight)
    first, last = span(0)
    lines = -(-(last - first + 1) // elements_per_line)
    share = -(-lines // period)
    index_dtype = weight.shape[0].ty.dtype

    def index(value):
        if isinstance(value, int):
            return tirx.IntImm(index_dtype, value)
        return value if value.ty.dtype == index_dtype else tirx.Cast(index_dtype, value)

    line = tirx.Var("prefetch_line", index_dtype)
    next_start = _substitute(start, {var: var + period})
    line_in_tile = index(tirx.floormod(var, period)) * share + line
    offset = Analyzer().simplify(index(next_start) + line_in_tile * elements_per_line)
    # The offset is flat: every other index 0, so lowering's flattening leaves it as it is.
    address = tirx.address_of(tirx.BufferLoad(weight, [index(0)] * (len(weight.shape) - 1) + [index(offset)]))
    prefetch = tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, tirx.IntImm("int32", _READ),
                                                   tirx.IntImm("int32", _L2_LOCALITY),
                                                   tirx.IntImm("int32", _DATA_CACHE)))
    body = tirx.For(line, index(0), index(share), tirx.ForKind.SERIAL, prefetch)
    return tirx.IfThenElse(var + period < extent, body, None)


def insert_prefetches(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every marked loop prefetching the next tile's weights (and unmarked)."""
    def rewrite(loop: tirx.For):
        if ANNOTATION not in loop.annotations:
            return loop
        weight = func.params[int(loop.annotations[ANNOTATION])]
        annotations = {key: value for key, value in loop.annotations.items() if key != ANNOTATION}
        prefetch = _prefetches(loop, weight)
        body = loop.body if prefetch is None else tirx.SeqStmt([prefetch, loop.body])
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, annotations)

    return tvm_ffi.structural_map(func, (tirx.For, rewrite), order="post")


@tirx.transform.prim_func_pass(opt_level=0, name="PrefetchNextTile")
def PrefetchNextTile(func, _mod, _ctx):  # noqa: N802 (named as TVM's passes are)
    return insert_prefetches(func)
