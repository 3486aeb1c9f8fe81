"""Register tiles on the stack.

The CPU templates accumulate each register tile in a "local" buffer (`cache_write(..., "local")`,
`set_scope(..., "local")`) that LLVM is meant to hold in vector registers. TVM's LowerTVMBuiltin
allocates on the stack only "global" buffers under 1 KB; every other allocation, these tiles
included whatever their size (an AVX2 tile of 128 bytes too), goes to the runtime's workspace
pool: a call to allocate, a memset, the accumulators' stores and reloads behind a pointer LLVM
cannot see through, and a call to free, for every tile (3136 tiles per call of a 56x56x128 conv).
`KeepTilesOnStack`, run before it, marks such allocations to stay allocas, which LLVM promotes to
registers. Weights flushed, 2 threads, znver4, each pair round-robin: the 56x56x128 2/2 bit-serial
conv 0.85 against 1.10 ms, 14x14x512 0.87 against 0.98; the int8 Winograd and direct convs 2-9%
faster.

Only "local" buffers of a known size up to MAX_STACK_BYTES: those are a tile's; larger or dynamic
ones stay on the pool, off the worker threads' stacks, as do other scopes (a padded input and a
Winograd group's weights are "global"; staged levels, which must stay in memory, "local.staged").
"""

import tvm
import tvm_ffi
from tvm import tirx

MAX_STACK_BYTES = 16 * 1024
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # LowerTVMBuiltin leaves an allocation so marked as it is


def _constant_bytes(buffer: tirx.Buffer) -> "int | None":
    elements = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        elements *= int(extent)
    dtype = tvm.DataType(buffer.dtype)
    return elements * dtype.bits * dtype.lanes // 8


def keep_tiles_on_stack(func: tirx.PrimFunc) -> tirx.PrimFunc:
    def mark(alloc: tirx.AllocBuffer):
        size = _constant_bytes(alloc.buffer)
        if alloc.buffer.scope() != "local" or size is None or size > MAX_STACK_BYTES:
            return alloc
        return tirx.AllocBuffer(alloc.buffer, {**alloc.annotations, DISABLE_LOWER_BUILTIN: tirx.IntImm("bool", 1)})

    return tvm_ffi.structural_map(func, (tirx.AllocBuffer, mark), order="post")


@tirx.transform.prim_func_pass(opt_level=0, name="KeepTilesOnStack")
def KeepTilesOnStack(func, _mod, _ctx):  # noqa: N802 (named as TVM's passes are)
    return keep_tiles_on_stack(func)
