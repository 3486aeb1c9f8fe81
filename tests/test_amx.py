"""The int8-dot conv on AMX tiles (schedules/amx.py): bit-exact against the numpy reference on
awkward shapes (output channels off 16, odd images, stride 2, 1x1, asymmetric padding, batch 2,
short rows sharing a tile, the widest levels), fused with the next layer's pack, in MetaSchedule's design spaces
after its postprocs, and in a fresh process that nothing else asked AMX for (the kernel asks the
OS itself); layers whose channels do not fill 64-byte tile rows stay on VNNI. The code runs only
where this CPU has AMX-INT8 (Intel Sapphire Rapids and later); everywhere, the build for such a
CPU is read: tile loads, tdpbusd and stores, the configuration loaded where the thread's differs."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tvm

from kernel_cases import tuning_spaces
from test_int8_dot import _case_data, _compile_case, _conv_func, _conv_writing_levels_case, _run
from schedules import amx
from wrpn_tvm import ops
from wrpn_tvm.lowering.kernel_choice import cpu_kind, estimated_ratio, layer_work
from wrpn_tvm.pipeline import compile_prim_func
from wrpn_tvm.targets import resolve

REPO = Path(__file__).resolve().parent.parent
SAPPHIRE_RAPIDS = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids", "num-cores": 2}
HOST_HAS_AMX = amx.available(resolve("host").target)
needs_amx = pytest.mark.skipif(not HOST_HAS_AMX, reason="this CPU has no AMX-INT8 to run the code")

# (abits, wbits, channels, out_channels, kernel, stride, padding, batch, image): channels that fill
# 64-byte tile rows, everything else awkward.
AMX_CASES = [
    (2, 2, 64, 32, 3, 1, 1, 1, 8),
    (4, 2, 128, 40, 3, 2, 1, 1, 11),
    (4, 4, 192, 48, 3, 1, 1, 2, 7),
    (2, 4, 64, 17, 1, 2, 0, 1, 9),
    (1, 1, 256, 32, 3, 2, (0, 1, 2, 1), 1, 13),
    (2, 1, 64, 5, 1, 1, 0, 1, 5),
    (4, 4, 128, 64, 3, 1, 1, 1, 14),
]


def _asm(executable) -> str:
    return executable.mod.inspect_source("asm")


@needs_amx
@pytest.mark.parametrize("case", AMX_CASES, ids=str)
def test_conv2d_on_amx_tiles_is_exact(case):
    x, w, want = _case_data(case, AMX_CASES.index(case))
    executable, layout = _compile_case(case, "host", case[:2])
    assert "tdpbusd" in _asm(executable)
    got = _run(executable, x, ops.prepack_int8_weight(w, layout), (case[7], *want.shape[2:], case[3]))
    assert np.array_equal(got, want)


@needs_amx
def test_extreme_levels_on_amx_tiles_are_exact():
    """Every activation at its top level, weights at both ends: the largest sums a tile adds."""
    case = (4, 4, 256, 32, 3, 1, 1, 1, 5)
    x = np.full((1, 256, 5, 5), 15)
    w = np.concatenate([np.full((16, 256, 3, 3), -7), np.full((16, 256, 3, 3), 7)])
    executable, layout = _compile_case(case, "host", case[:2])
    got = _run(executable, x, ops.prepack_int8_weight(w, layout), (1, 5, 5, 32))
    assert np.array_equal(got, ops.conv2d_levels_reference(x, w, 4, 4, 1, 1))


@needs_amx
def test_conv_writing_the_next_layers_levels_on_amx_tiles_is_exact():
    """The epilogue and the next layer's pack read the tile the accumulators were stored to."""
    spec = resolve("host")
    func, inputs, want = _conv_writing_levels_case(AMX_CASES[1], ops.int8_layout(spec.target), seed=1)
    executable = compile_prim_func(func, spec)
    assert "tdpbusd" in _asm(executable)
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros(want.shape, want.dtype), device)
    executable["main"](*(tvm.runtime.tensor(a, device) for a in inputs), out)
    assert np.array_equal(out.numpy(), want)


def test_layers_whose_channels_do_not_fill_tile_rows_stay_on_vnni():
    executable, _ = _compile_case((2, 2, 96, 32, 3, 1, 1, 1, 8), SAPPHIRE_RAPIDS, (2, 2))
    asm = _asm(executable)
    assert "tdpbusd" not in asm and re.search(r"\bvpdpbusd\b", asm)
    assert ops.int8_dot.amx_tile(96, 8, 8, 10, 1, ops.int8_layout(resolve(SAPPHIRE_RAPIDS).target)) is None


def test_the_build_for_an_amx_cpu_loads_multiplies_and_stores_tiles():
    """Read, not run (any x86 host): per tile, the thread's configuration read back and this
    kernel's loaded where it differs (with the OS asked for AMX state where the thread has none
    configured), R x NB tdpbusd per reduction step after R + NB tile loads (2 x 2 here), and R x NB
    stores."""
    case = (2, 2, 128, 64, 3, 1, 1, 1, 14)  # 14x14 out: tiles of 2 rows x 14 pixels x 2 blocks
    asm = _asm(_compile_case(case, SAPPHIRE_RAPIDS, case[:2])[0])
    tile = ops.int8_dot.amx_tile(128, 14, 14, 16, 1, ops.int8_layout(resolve(SAPPHIRE_RAPIDS).target))
    assert tile == ops.AmxTile(rows=1, pixels=14, padded_width=16, out_height=14, out_width=14) and amx.default_tile(tile, 4) == (2, 2)
    assert len(re.findall(r"\bldtilecfg\b", asm)) == 1 and len(re.findall(r"\bsttilecfg\b", asm)) == 1
    # LLVM may unroll the reduction's 3 x 3 x 2 steps (it does, fully, at this size).
    multiplies = len(re.findall(r"\btdpbusd\b", asm))
    assert multiplies in (4, 4 * 18) and len(re.findall(r"\btileloadd\b", asm)) == multiplies
    assert len(re.findall(r"\btilestored\b", asm)) == 4
    assert re.search(r"\bxgetbv\b", asm) and re.search(r"\bsyscall\b", asm)


# (out height, out width, padded input width, stride, weight blocks)
TILINGS = [(56, 56, 58, 1, 8), (7, 7, 9, 1, 64), (7, 7, 16, 2, 64), (13, 11, 13, 1, 3), (5, 5, 5, 1, 1),
           (1, 1, 3, 1, 1), (28, 28, 30, 1, 1), (4, 4, 6, (1, 2), 2)]


@pytest.mark.parametrize("height, width, padded_width, stride, blocks", TILINGS)
def test_default_tiles_fit_the_tile_registers(height, width, padded_width, stride, blocks):
    layer = ops.int8_dot.amx_tile(64, height, width, padded_width, stride, ops.Int8Layout(16))
    a_tiles, tile_blocks = amx.default_tile(layer, blocks)
    assert layer.computed_rows % (a_tiles * layer.rows) == 0 and width % layer.pixels == 0 and blocks % tile_blocks == 0
    assert layer.tile_rows <= 16 and amx.tile_counts(a_tiles, tile_blocks)
    assert height <= layer.computed_rows < height + layer.rows


def test_short_rows_share_a_tile_through_the_padding_columns():
    """7x7 outputs of a padded 3x3 conv: 2 rows a tile (9 + 7 tile rows), 8 rows computed; not with
    unequal strides, nor where a row fills a tile."""
    layout = ops.Int8Layout(16)
    tile = ops.int8_dot.amx_tile(1024, 7, 7, 9, 1, layout)
    assert (tile.rows, tile.pixels, tile.tile_rows, tile.computed_rows) == (2, 7, 16, 8)
    assert tile.useful_fraction == pytest.approx(49 / 64)
    assert ops.int8_dot.amx_tile(64, 5, 5, 5, 1, layout).rows == 3
    assert ops.int8_dot.amx_tile(64, 4, 4, 6, (1, 2), layout).rows == 1
    assert ops.int8_dot.amx_tile(64, 14, 14, 16, 1, layout).rows == 1


def test_the_tile_configuration_names_each_tiles_rows():
    """Palette 1; accumulators then A tiles of the layer's tile rows (16 where 2 rows of a 7x7 map
    share one), B tiles of 16 rows (64 channels in groups of 4); 64 bytes a row; unused tiles 0."""
    layer = ops.int8_dot.amx_tile(1024, 7, 7, 9, 1, ops.Int8Layout(16))
    config = amx.tile_config(amx.RegisterTile(2, layer, 2))
    assert config[0] == 1 and len(config) == 64
    assert list(config[48:56]) == [16, 16, 16, 16, 16, 16, 16, 16]
    assert list(config[16:32:2]) == [64] * 8 and not any(config[17:32:2])
    config = amx.tile_config(amx.RegisterTile(1, ops.int8_dot.amx_tile(64, 14, 14, 16, 1, ops.Int8Layout(16)), 2))
    assert list(config[48:56]) == [14, 14, 14, 16, 16, 0, 0, 0] and list(config[16:32:2]) == [64] * 5 + [0] * 3


@needs_amx
def test_kernels_of_different_tiles_take_turns_on_one_thread():
    """A thread keeps its tile configuration between calls: a kernel whose tiles have other rows
    loads its own (14-row tiles, then 16-row tiles of two 7x7 rows, and back), exact every time
    (a kernel that kept the other's configuration would read 14 of 16 rows, or 16 of 14)."""
    cases = [(2, 2, 64, 32, 3, 1, 1, 1, 14), (4, 4, 64, 48, 3, 1, 1, 1, 7)]
    compiled = []
    for index, case in enumerate(cases):
        x, w, want = _case_data(case, index)
        executable, layout = _compile_case(case, "host", case[:2])
        compiled.append((executable, x, ops.prepack_int8_weight(w, layout), want, case))
    for _ in range(3):  # every thread of the pool runs tiles of both, in turn
        for executable, x, w_packed, want, case in compiled:
            got = _run(executable, x, w_packed, (case[7], *want.shape[2:], case[3]))
            assert np.array_equal(got, want)


@pytest.mark.usefixtures("tensor_intrinsics")
def test_metaschedule_design_spaces_use_the_tiles():
    """Both loop orders' design spaces, through every postproc MetaSchedule runs for the target,
    tdpbusd in their code, exact where this CPU runs it."""
    from tvm.s_tir import meta_schedule as ms

    case = AMX_CASES[2]
    abits, wbits, channels, out_channels, kernel, stride, padding, batch, image = case
    x, w, want = _case_data(case, 2)
    spec = resolve(SAPPHIRE_RAPIDS)
    layout = ops.int8_layout(spec.target)
    func = _conv_func(layout, x.shape, out_channels, channels, kernel, stride, padding, case[:2])
    context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=spec.target,
                             space_generator="post-order-apply", search_strategy="evolutionary")
    with spec.target:
        spaces = context.generate_design_space()
        sampled = tuning_spaces(func, "cpu", ops.INT8_CONV2D_RULE, "wrpn_int8_conv2d", 3)
    assert len(spaces) == 2
    for space in [*spaces, *sampled]:
        assert all(postproc.apply(space) for postproc in context.space_generator.postprocs)
        executable = tvm.compile(space.mod, target=spec.target)
        assert "tdpbusd" in _asm(executable)
        if HOST_HAS_AMX:
            got = _run(executable, x, ops.prepack_int8_weight(w, layout), (batch, *want.shape[2:], out_channels))
            assert np.array_equal(got, want)


@needs_amx
def test_a_fresh_process_runs_amx_code_without_asking_the_os_itself(tmp_path):
    """Linux grants AMX state per process on request; the library's init asks for it, so a
    process that only loads the library and calls it (no torch, no ctypes) runs it."""
    case = AMX_CASES[0]
    executable, layout = _compile_case(case, "host", case[:2])
    library = tmp_path / "conv.so"
    executable.export_library(str(library))
    x, w, want = _case_data(case, 0)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "w.npy", ops.prepack_int8_weight(w, layout))
    np.save(tmp_path / "want.npy", want)
    script = textwrap.dedent(f"""
        import numpy as np, tvm
        lib = tvm.runtime.load_module({str(library)!r})
        x, w, want = (np.load({str(tmp_path)!r} + f"/{{name}}.npy") for name in ("x", "w", "want"))
        out = tvm.runtime.tensor(np.zeros((1, 8, 8, 32), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
        assert np.array_equal(out.numpy().transpose(0, 3, 1, 2), want)
        print("exact")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and "exact" in done.stdout, done.stderr[-2000:]


def test_the_cost_model_prices_amx_layers_by_their_tiles():
    """On an AMX CPU, int8 wins every multi-bit 3x3 layer of ResNet-18 2x and the 1/1 ones on
    14-pixel tiles; a layer is priced by the tile rows its pixels fill; channels off 64 are priced
    as VNNI."""
    target = resolve(SAPPHIRE_RAPIDS).target
    layout = ops.int8_layout(target)
    assert cpu_kind(target) == "amx"

    def ratio(abits, wbits, size, channels):
        shape = (1, channels, size, size)
        return estimated_ratio(layer_work(abits, wbits, (3, 3), shape, shape, layout, 1), "amx")

    for size, channels in [(56, 128), (28, 256), (14, 512), (7, 1024)]:
        assert ratio(2, 2, size, channels) < 1 and ratio(4, 2, size, channels) < ratio(2, 2, size, channels)
    assert ratio(1, 1, 28, 256) < 1
    # 7x7: 49 pixels on 4 tiles of 16 rows (2 rows shared a tile), 14x14: 14 of 16 rows
    assert ratio(2, 2, 7, 1024) == pytest.approx(ratio(2, 2, 14, 512) * (14 / 16) / (49 / 64))
    shape = (1, 96, 28, 28)
    off_rows = layer_work(2, 2, (3, 3), shape, shape, layout, 1)
    assert off_rows.amx_tile is None
    assert estimated_ratio(off_rows, "amx", "intel") == estimated_ratio(off_rows, "avx512-vnni", "intel")


def test_a_log_tuned_without_amx_leaves_the_tiled_convs_untuned(capsys, monkeypatch):
    """The shipped x86-avx512 log's int8 conv records schedule VNNI: on a CPU with AMX they are
    left out (those convs run on the tiles at their default decisions), the rest applies."""
    from wrpn_tvm.tuning import database

    log = database.read_log(REPO / "tuning_logs" / "resnet18-2x-a2w2-x86-avx512")
    monkeypatch.setattr(database, "read_log", lambda _: log)  # read once (12 s)
    assert len(database.load_database(log.log_dir, resolve("x86-avx512")).get_all_tuning_records()) == len(log.records)
    capsys.readouterr()
    kept = len(database.load_database(log.log_dir, resolve(SAPPHIRE_RAPIDS)).get_all_tuning_records())
    left_out = re.search(r"(\d+) record\(s\) of int8-dot convs were tuned without AMX tiles", capsys.readouterr().err)
    assert left_out and 0 < kept == len(log.records) - int(left_out.group(1))


def test_a_model_runs_its_int8_convs_on_amx_tiles(tmp_path):
    """ResNet-18 at 1/4 width on 32x32 images (its 64- and 128-channel convs on tiles of 2 rows x 2
    pixels and of 1 pixel, the rest on VNNI), every quantized conv int8: built for Sapphire Rapids on any host; where this CPU has AMX, the same
    logits, bit for bit, as the bit-serial build, and `--explain` names the tiles."""
    import json

    import torch

    from test_lowering_models import randomize_batch_norm
    from wrpn_tvm import build, runtime
    from wrpn_tvm.nn import build_model, export_model

    torch.manual_seed(0)
    model = randomize_batch_norm(build_model("resnet18", 0.25, 2, 2, in_channels=3, image_size=32))
    x = torch.rand(2, 3, 32, 32)
    path = tmp_path / "resnet.pt2"
    torch.export.save(export_model(model, x), str(path))
    target = "host" if HOST_HAS_AMX else json.dumps(SAPPHIRE_RAPIDS)
    tiled = build.compile_model(path, target, tmp_path / "amx.so", kernels="int8-dot")
    on_tiles = [layer.index for layer in tiled.layers if "int8-dot on AMX tiles" in layer.reason]
    assert on_tiles == [11, 13, 14, 15, 16, 17, 18, 19]  # 64 input channels and more (2x2 and 1x1 outputs)
    if HOST_HAS_AMX:
        (got,) = runtime.run(tiled.library, [x.numpy()])
        bitserial = build.compile_model(path, "host", tmp_path / "bs.so", kernels="bit-serial").library
        assert np.array_equal(got, runtime.run(bitserial, [x.numpy()])[0])
