"""What the kernel tests share: random weights on a WRPN grid, and a template's MetaSchedule design
spaces as a search would build them (sampled, then rewritten by the postprocs it runs on CPUs)."""

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms

import schedules
from wrpn_tvm import ops


def random_weights(rng, wbits, shape):
    """Integer weight levels: +-1 at 1 bit, else symmetric within +-(2^(wbits-1) - 1)."""
    if wbits == 1:
        return rng.choice([-1, 1], shape)
    top = 2 ** (wbits - 1) - 1
    return rng.integers(-top, top + 1, shape)


def epilogue_bitpack_case(rng, size: int, channels: int, abits: int) -> tuple:
    """((acc, scale, offset), the packed words the numpy reference wants) for the fused epilogue
    bitpack of benchmarks/arm_hot_loops.epilogue_bitpack: accumulators spread over every level and
    past both clips, levels rounded half to even (as nearbyint)."""
    acc = rng.integers(-300, 300, (1, size, size, channels)).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, channels).astype(np.float32)
    offset = rng.uniform(-0.5, 1.0, channels).astype(np.float32)
    affine = acc.transpose(0, 3, 1, 2).astype(np.float32) * scale[:, None, None] + offset[:, None, None]
    levels = np.rint(np.clip(affine, 0, 1) * np.float32(2**abits - 1)).astype(np.int64)
    return (acc, scale, offset), ops.pack_activation_reference(levels, abits, 64)


def tuning_spaces(func, key: str, rule: str, block: str, seed: int) -> list:
    """The custom rule's design spaces for `block` of func, sampled with `seed`, after the postprocs
    MetaSchedule applies before building a candidate (each must accept the space)."""
    sch = Schedule(func, seed=seed)
    spaces = tvm.get_global_func(schedules.rule_name(key, rule))(sch, sch.get_sblock(block))
    for space in spaces:
        root = space.get_sblock("root")
        for annotation, value in (("parallel", 32), ("vectorize", 64), ("unroll_explicit", 512)):
            space.annotate(root, f"meta_schedule.{annotation}", value)
        for postproc in (ms.postproc.RewriteParallelVectorizeUnroll(), ms.postproc.RewriteReductionBlock(),
                         ms.postproc.RewriteTensorize()):
            assert postproc.apply(space)
    return spaces


def bitserial_conv_tuning_spaces(key: str, abits: int, wbits: int, seed: int) -> list:
    """tuning_spaces of a 3x3 bit-serial conv on a 7x7 input of two 64-bit channel words."""
    data = te.placeholder((1, 7, 7, abits, 2), "uint64", name="data")
    weight = te.placeholder((3, 3, wbits, 2, 32), "uint64", name="weight")
    func = te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, abits, wbits, 1, 1)])
    return tuning_spaces(func, key, ops.CONV2D_RULE, "wrpn_bitserial_conv2d", seed)


def dense_epilogue_bitpack(rows: int, channels: int, abits: int):
    """The bitpack of a dense layer's input as the lowering fuses it to the previous dense layer:
    its NK int32 accumulator, per-channel affine, levels and the pack of 64-bit words (rows of NK
    levels, `pack_activation`'s dense form); int64 indices, as Relax's emit_te gives them."""
    from tvm import tirx

    acc = te.placeholder((rows, channels), "int32", name="acc")
    scale = te.placeholder((channels,), "float32", name="scale")
    offset = te.placeholder((channels,), "float32", name="offset")
    affine = te.compute((rows, channels), lambda n, k: acc[n, k].astype("float32") * scale[k] + offset[k],
                        name="wrpn_epilogue")
    top = tirx.const(2**abits - 1, "float32")
    levels = te.compute(affine.shape, lambda *i: tirx.nearbyint(
        tirx.min(tirx.max(affine(*i), tirx.const(0.0, "float32")), tirx.const(1.0, "float32")) * top), name="wrpn_levels")
    return te.create_prim_func([acc, scale, offset, ops.pack_activation(levels, abits, 64, quantize=False)],
                               index_dtype_override="int64")


def dense_epilogue_bitpack_case(rng, rows: int, channels: int, abits: int) -> tuple:
    """((acc, scale, offset), the packed words the numpy reference wants) for dense_epilogue_bitpack:
    accumulators over every level and past both clips, levels rounded half to even (as nearbyint)."""
    acc = rng.integers(-300, 300, (rows, channels)).astype(np.int32)
    scale = rng.uniform(0.001, 0.01, channels).astype(np.float32)
    offset = rng.uniform(-0.5, 1.0, channels).astype(np.float32)
    levels = np.rint(np.clip(acc.astype(np.float32) * scale + offset, 0, 1) * np.float32(2**abits - 1)).astype(np.int64)
    return (acc, scale, offset), ops.pack_activation_reference(levels, abits, 64)
