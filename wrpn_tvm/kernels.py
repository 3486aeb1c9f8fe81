"""Single bit-serial kernels, compiled and run: integer levels in, the kernel's int32 result out.
For tests and benchmarks that compare each optimized kernel with its numpy reference
(`ops.reference`). Kernels are compiled once per (shapes, bits, stride, padding, target) and
cached; weights are a runtime argument, so new weight values reuse the compiled kernel."""

import numpy as np
import tvm
from tvm import te

from .errors import WrpnError
from .ops.bitpack import block_conv_weight, pack_activation, pack_weight
from .ops.bitserial import as_padding4, as_pair, bitserial_conv2d, bitserial_dense
from .ops.grid import check_activation_levels, check_bits, check_weight_levels
from .pipeline import compile_prim_func
from .targets import TargetSpec, resolve

_compiled: dict[tuple, object] = {}  # key -> tvm.compile result


def _compile(key: tuple, make_tensors, spec: TargetSpec):
    """Build (and cache) the PrimFunc that make_tensors() describes, with the default schedules."""
    key = key + (str(spec.target),)
    if key not in _compiled:
        _compiled[key] = compile_prim_func(te.create_prim_func(make_tensors()), spec)
    return _compiled[key]


def compile_conv2d(x_shape, w_shape, abits, wbits, stride=1, padding=0, target="host", word_bits=32,
                   split_shift_groups=False, weight_block=None):
    """Compile pack_activation(levels) + bit-serial conv2d for these shapes; the function takes
    (x int32 NCHW levels, packed weight) and writes int32 NHWC. `split_shift_groups`: the kernel
    form that sums each shift group apart (ops.bitserial_conv2d); `weight_block`: the weights
    blocked by that many output channels (ops.block_conv_weight)."""
    check_bits(abits, wbits)
    spec = resolve(target)
    stride, padding = as_pair(stride, "stride"), as_padding4(padding)
    batch, channels, height, width = x_shape
    out_channels, w_channels, kernel_h, kernel_w = w_shape
    if channels != w_channels:
        raise WrpnError(f"activation has {channels} channels but the weight expects {w_channels}")
    words = -(-channels // word_bits)

    def tensors():
        x = te.placeholder(x_shape, "int32", name="x")
        w_layout = (kernel_h, kernel_w, wbits, words, out_channels)
        if weight_block:
            w_layout = (out_channels // weight_block, *w_layout[:4], weight_block)
        w = te.placeholder(w_layout, f"uint{word_bits}", name="w")
        packed = pack_activation(x, abits, word_bits, quantize=False)
        return [x, w, bitserial_conv2d(packed, w, abits, wbits, stride, padding,
                                       split_shift_groups=split_shift_groups)]

    key = ("conv2d", tuple(x_shape), tuple(w_shape), abits, wbits, stride, padding, word_bits, split_shift_groups,
           weight_block)
    return _compile(key, tensors, spec)


def compile_dense(x_shape, w_shape, abits, wbits, target="host", word_bits=32):
    """Compile pack_activation(levels) + bit-serial dense: (x int32 [N, K], packed weight) -> [N, O]."""
    check_bits(abits, wbits)
    spec = resolve(target)
    (batch, features), (out_features, w_features) = x_shape, w_shape
    if features != w_features:
        raise WrpnError(f"activation has {features} features but the weight expects {w_features}")
    words = -(-features // word_bits)

    def tensors():
        x = te.placeholder(x_shape, "int32", name="x")
        w = te.placeholder((wbits, words, out_features), f"uint{word_bits}", name="w")
        packed = pack_activation(x, abits, word_bits, quantize=False)
        return [x, w, bitserial_dense(packed, w, abits, wbits)]

    return _compile(("dense", tuple(x_shape), tuple(w_shape), abits, wbits, word_bits), tensors, spec)


def _device(spec: TargetSpec):
    """The local device that runs code for spec, or a WrpnError saying why there is none."""
    if spec.is_cuda:
        device = tvm.cuda(0)
        if not device.exist:
            raise WrpnError(f"target {spec.name} needs an NVIDIA GPU, and this machine has none")
        return device
    if spec.is_remote_arch:
        raise WrpnError(f"target {spec.name} compiles for another CPU; run it on the device over RPC")
    return tvm.cpu(0)


def _run(executable, spec: TargetSpec, out_shape, *arrays) -> np.ndarray:
    device = _device(spec)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype=np.int32), device)
    executable["main"](*args, out)
    return out.numpy()


def conv2d_levels(x, w, abits, wbits, stride=1, padding=0, target="host", word_bits=32,
                  split_shift_groups=False, weight_block=None) -> np.ndarray:
    """int32 NCHW result of the compiled bit-serial conv of levels x (NCHW) and w (OIHW)
    (`split_shift_groups`, `weight_block`: see compile_conv2d)."""
    check_bits(abits, wbits)
    x = check_activation_levels(x, abits).astype(np.int32)
    w = check_weight_levels(w, wbits)
    if x.ndim != 4 or w.ndim != 4:
        raise WrpnError(f"conv2d_levels expects NCHW data and OIHW weights, got {x.shape} and {w.shape}")
    spec = resolve(target)
    executable = compile_conv2d(x.shape, w.shape, abits, wbits, stride, padding, spec, word_bits, split_shift_groups,
                                weight_block)
    stride_h, stride_w = as_pair(stride, "stride")
    top, left, bottom, right = as_padding4(padding)
    out_h = (x.shape[2] + top + bottom - w.shape[2]) // stride_h + 1
    out_w = (x.shape[3] + left + right - w.shape[3]) // stride_w + 1
    out_shape = (x.shape[0], out_h, out_w, w.shape[0])
    packed = pack_weight(w, wbits, word_bits)
    nhwc = _run(executable, spec, out_shape, x, block_conv_weight(packed, weight_block) if weight_block else packed)
    return nhwc.transpose(0, 3, 1, 2)


def dense_levels(x, w, abits, wbits, target="host", word_bits=32) -> np.ndarray:
    """int32 [N, O] result of the compiled bit-serial dense of levels x (N, K) and w (O, K)."""
    check_bits(abits, wbits)
    x = check_activation_levels(x, abits).astype(np.int32)
    w = check_weight_levels(w, wbits)
    if x.ndim != 2 or w.ndim != 2:
        raise WrpnError(f"dense_levels expects (N, K) data and (O, K) weights, got {x.shape} and {w.shape}")
    spec = resolve(target)
    executable = compile_dense(x.shape, w.shape, abits, wbits, spec, word_bits)
    return _run(executable, spec, (x.shape[0], w.shape[0]), x, pack_weight(w, wbits, word_bits))
