"""Per-layer kernel choice between bit-serial, the int8 dot product and (AVX2) table lookups: all
exact, so a model gives the same output bit for bit whichever runs each layer; the cost model's
shape; tuning measures bit-serial and int8 and a build with the log runs each layer on the faster
one; convs that read one map run one kernel unless a second pass packing it pays."""

import numpy as np
import tvm
import pytest
import torch
from torch import nn

from wrpn_tvm import build, ops, pipeline, runtime
from wrpn_tvm.cli import main as cli_main
from wrpn_tvm.frontend import to_relax
from wrpn_tvm.lowering import lower_wrpn
from wrpn_tvm.kernel_kinds import BITSERIAL, INT8_DOT, KERNELS, LUT
from wrpn_tvm.lowering.kernel_choice import (WINOGRAD_TIME_RATIO, Choice, SharedInput, cpu_kind, cpu_vendor,
                                             estimated_costs, estimated_ratio, layer_work, settle_shared_inputs)
from wrpn_tvm.nn import export_model
from wrpn_tvm.ops import int8_layout
from wrpn_tvm.targets import resolve
from wrpn_tvm.tuning import load_database, tune_tasks
from wrpn_tvm.tuning.tasks import extract_tasks
from test_lowering_models import HandWritten, randomize_batch_norm
from test_lowering_recognition import _quantize, on_grid


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batch_norm(HandWritten())
    x = torch.rand(4, 1, 12, 12)
    path = tmp_path_factory.mktemp("choice") / "hand.pt2"
    torch.export.save(export_model(model, x), str(path))
    return path, x.numpy()


def kernels_of(layers) -> list[str]:
    return [layer.lowered_to.split(" ", 1)[0] for layer in layers]


def test_every_kernel_choice_gives_the_same_output_bit_for_bit(program, tmp_path):
    path, x = program
    outputs = {}
    for kernels in ("bit-serial", "int8-dot", "lut", "auto"):
        result = build.compile_model(path, "host", tmp_path / f"{kernels}.so", kernels=kernels)
        (outputs[kernels],) = runtime.run(result.library, [x])
        if kernels != "auto":
            # The convs run the kernel asked for (lut too: this AVX-512 machine runs the AVX2 template,
            # auto just does not offer it here); the quantized dense stays bit-serial (conv only).
            assert kernels_of(result.layers) == ["fp32", kernels, kernels, BITSERIAL, "fp32"]
            assert f"{kernels} asked for" in result.layers[1].reason
    assert np.array_equal(outputs["int8-dot"], outputs["bit-serial"])
    assert np.array_equal(outputs["lut"], outputs["bit-serial"])
    assert np.array_equal(outputs["auto"], outputs["bit-serial"])


def test_an_avx2_build_offers_table_lookups_and_gives_the_same_output(program, tmp_path):
    """On x86-avx2 (vpmaddubsw is its best int8 product) auto weighs all three kernels per layer;
    whichever it picks, and lut asked for, the output is bit-serial's bit for bit."""
    path, x = program
    outputs, layers = {}, {}
    for kernels in ("bit-serial", "lut", "auto"):
        result = build.compile_model(path, "x86-avx2", tmp_path / f"avx2-{kernels}.so", kernels=kernels)
        (outputs[kernels],) = runtime.run(result.library, [x])
        layers[kernels] = result.layers
    assert kernels_of(layers["lut"]) == ["fp32", LUT, LUT, BITSERIAL, "fp32"]
    assert "lut" in layers["auto"][1].reason and "int8-dot" in layers["auto"][1].reason
    assert np.array_equal(outputs["lut"], outputs["bit-serial"])
    assert np.array_equal(outputs["auto"], outputs["bit-serial"])


def test_lut_is_refused_where_it_cannot_run():
    """4-bit weights (a code per weight), and targets without AVX2: bit-serial, saying why."""
    torch.manual_seed(0)
    from wrpn_tvm.nn import build_model

    model = build_model("smallcnn", 1.0, 2, 4).eval()
    mod = to_relax(export_model(model, torch.rand(1, 1, 28, 28)))
    _, reports = lower_wrpn(mod, resolve("x86-avx2"), LUT)
    quantized = [report for report in reports if report.is_bitserial and report.op == "conv2d"]
    assert quantized and all(kernels_of([report]) == [BITSERIAL] for report in quantized)
    assert "lut asked for, but it needs weights of at most 2 bits" in quantized[0].reason
    _, reports = lower_wrpn(to_relax(export_model(build_model("smallcnn", 1.0, 2, 2).eval(),
                                                  torch.rand(1, 1, 28, 28))), resolve("rasp5"), LUT)
    assert "the lookup kernel needs an x86 CPU with AVX2" in [r for r in reports if r.is_bitserial][0].reason


def test_a_target_without_int8_dot_keeps_bit_serial_and_says_why(program):
    path, _ = program
    mod = to_relax(torch.export.load(str(path)))
    _, reports = lower_wrpn(mod, resolve("rasp4"), INT8_DOT)
    assert kernels_of(reports)[1:3] == [BITSERIAL, BITSERIAL]
    assert "int8-dot asked for, but this target has no int8 dot product" in reports[1].reason
    _, reports = lower_wrpn(mod, resolve("rasp4"))
    assert "kernel by" not in reports[1].reason  # no choice to explain where there is one kernel


def test_int8_dot_is_offered_where_the_isa_has_a_dot_product():
    assert int8_layout(resolve("rasp4").target) is None
    assert int8_layout(resolve("rasp5").target).out_block == 4
    assert int8_layout(resolve("x86-avx2").target).out_block == 8
    assert int8_layout(resolve("x86-avx2-vnni").target).out_block == 8
    assert int8_layout(resolve("x86-avx512").target).out_block == 16
    assert pipeline.kernel_variants(resolve("rasp4")) == (BITSERIAL,)
    assert pipeline.kernel_variants(resolve("host")) == (BITSERIAL, INT8_DOT)
    assert pipeline.kernel_variants(resolve("x86-avx2")) == (BITSERIAL, INT8_DOT, LUT)
    assert pipeline.kernel_variants(resolve("x86-avx2-vnni")) == (BITSERIAL, INT8_DOT)


def test_lut_cost_follows_its_lookups_tables_and_widenings():
    """Per lookup 32 x 2 MACs at 2-bit weights (x 4 at 1 bit), plus a table per input pixel and
    group, plus a widening every int8_steps lookups (into int16 where the reduction fits): on
    x86-avx2 ResNet-18's 2x 2/2 3x3 layers go to lut, a 4/2 one whose sums need int32 (4 lookups
    between widenings) to int8, and a 1x 1/1 56x56 one stays bit-serial."""
    layout = int8_layout(resolve("x86-avx2").target)
    kernels = (BITSERIAL, INT8_DOT, LUT)

    def pick(abits, wbits, size, channels):
        work = layer_work(abits, wbits, (3, 3), (1, channels, size, size), (1, channels, size, size), layout, 1)
        costs = estimated_costs(work, "avx2", None, kernels)
        return min(costs, key=costs.get), work

    for size, channels in [(56, 128), (28, 256), (14, 512), (7, 1024)]:
        assert pick(2, 2, size, channels)[0] == LUT
    for size, channels in [(28, 256), (14, 512), (7, 1024)]:
        assert pick(4, 2, size, channels)[0] == INT8_DOT
    assert pick(1, 1, 56, 64)[0] == BITSERIAL
    work = pick(2, 2, 28, 256)[1]
    assert work.lut_lookups == 9 * 28 * 28 * (256 // 32) * (256 // 2) and work.lut_steps == 16 and work.lut_int16
    assert work.lut_tables == 30 * 30 * 128
    assert pick(4, 2, 28, 256)[1].lut_steps == 4 and not pick(4, 2, 28, 256)[1].lut_int16
    assert layer_work(2, 4, (3, 3), (1, 64, 8, 8), (1, 64, 8, 8), layout).lut_lookups == 0


@pytest.mark.parametrize("target", ["x86-avx512", "x86-avx2", "x86-avx2-vnni", "rasp5"])
def test_cost_model_follows_the_work_of_each_kernel(target):
    layout = int8_layout(resolve(target).target)
    kind = cpu_kind(resolve(target).target)

    def ratio(abits, wbits, channels, out_channels=256):
        work = layer_work(abits, wbits, (3, 3), (1, channels, 28, 28), (1, out_channels, 28, 28), layout)
        return estimated_ratio(work, kind)

    # More plane pairs make bit-serial slower and leave int8 as it is.
    assert ratio(4, 4, 256) < ratio(4, 2, 256) < ratio(2, 2, 256) < ratio(1, 1, 256)
    assert ratio(4, 2, 256) == pytest.approx(ratio(2, 2, 256) / 2)
    # Bit-serial pads channels to 64-bit words, int8 to 4: narrow layers favour int8.
    assert ratio(2, 2, 20) < ratio(2, 2, 256)
    assert ratio(2, 2, 20) == pytest.approx(ratio(2, 2, 64) * (20 / 64))
    # On the vpmaddubsw CPUs, int16 accumulation over a whole 3x3x64 reduction at 4/4 (144 steps of
    # pair sums up to 210) makes int8 cheaper than over 3x3x256, where it widens every few steps.
    assert ops.pair_sums_fit_int16(ops.pair_sum_max(4, 4), 9 * 64 // 4)
    assert not ops.pair_sums_fit_int16(ops.pair_sum_max(4, 4), 9 * 256 // 4)
    if kind == "avx2":
        assert ratio(4, 4, 64) < ratio(4, 4, 256) / 1.1
    else:
        assert ratio(4, 4, 64) == pytest.approx(ratio(4, 4, 256))


def test_avx_vnni_makes_int8_cheaper_than_on_plain_avx2():
    """Same layout and bit-serial kernels, one vpdpbusd per step instead of vpmaddubsw + vpaddw:
    the AVX-VNNI build picks int8 wherever the AVX2 one does, for less."""
    layout = int8_layout(resolve("x86-avx2").target)
    assert cpu_kind(resolve("x86-avx2-vnni").target) == "avx-vnni"
    for abits, wbits in [(2, 2), (4, 2), (4, 4), (1, 1)]:
        work = layer_work(abits, wbits, (3, 3), (1, 256, 28, 28), (1, 256, 28, 28), layout)
        assert estimated_ratio(work, "avx-vnni") < estimated_ratio(work, "avx2")


def _x86(cpu: str):
    return resolve({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": cpu}).target


def test_vnni_cost_follows_the_vendor_where_it_was_measured_apart():
    """Two 512-bit vpdpbusd per cycle on Intel's cores, one on Zen 4: at 2/2 over 3x3x256, int8 is
    the cost model's pick on Sapphire Rapids and bit-serial's on Zen 4 (as measured, 10-30%)."""
    assert [cpu_vendor(_x86(cpu)) for cpu in ("znver4", "znver5", "sapphirerapids", "icelake-server")] == [
        "amd", "amd", "intel", "intel"]
    assert cpu_vendor(resolve("rasp5").target) is None
    # An ISA level is costed as this machine's CPU where that can run it.
    host = cpu_vendor(resolve("host").target)
    assert cpu_vendor(resolve("x86-avx512").target) in (host, None)
    layout = int8_layout(resolve("x86-avx512").target)
    work = layer_work(2, 2, (3, 3), (1, 256, 28, 28), (1, 256, 28, 28), layout)
    assert estimated_ratio(work, "avx512-vnni", "intel") < 1 <= estimated_ratio(work, "avx512-vnni", "amd")
    assert estimated_ratio(work, "avx512-vnni", "amd") == estimated_ratio(work, "avx512-vnni", None)


def test_winograd_is_priced_by_the_share_of_its_tiles_outputs_that_the_layer_keeps():
    """The Winograd conv computes whole 2x2 tiles: a 7x7 map computes 64 outputs for its 49, so it
    costs 64/49 of an even map's ratio to the direct conv (measured 0.88-0.93 against 0.57-0.74 on
    znver4); a direct conv's ratio is 1."""
    from wrpn_tvm.lowering.kernel_choice import winograd_ratio

    layout = int8_layout(resolve("x86-avx512").target)

    def ratio(size, channels, stride=1):
        out = -(-size // stride)
        return winograd_ratio(layer_work(2, 2, (3, 3), (1, channels, size, size), (1, channels, out, out), layout, 1,
                                         stride), "avx512-vnni")

    assert ratio(14, 512) == WINOGRAD_TIME_RATIO["avx512-vnni"]
    assert ratio(7, 1024) == pytest.approx(WINOGRAD_TIME_RATIO["avx512-vnni"] * 64 / 49)
    assert ratio(14, 512, stride=2) == 1.0


def test_tuning_measures_both_kernels_and_the_build_runs_the_faster(program, tmp_path, capsys):
    """A tuning job's first trial of a task measures its template default: tuning the conv tasks
    of both lowerings for one trial each records both kernels of every quantized conv, and the
    build with that log runs each conv on the kernel whose record is faster."""
    path, x = program
    spec = resolve("host")
    mods = [pipeline.prepare_module(path, spec, kernels)[0] for kernels in pipeline.kernel_variants(spec)]
    tasks = extract_tasks(mods, spec)
    convs = [task for task in tasks if "conv2d_a" in task.task_name]
    # The first int8 conv writes the second's input levels from its tile (the pack fused into it).
    assert sorted(task.task_name.split("_a")[0] for task in convs) == [
        "fused_wrpn_int8_conv2d", "wrpn_conv2d", "wrpn_conv2d", "wrpn_int8_conv2d"]
    assert "int8_levels" in next(task.task_name for task in convs if task.task_name.startswith("fused"))
    int8_packs = [task for task in tasks if "int8_levels" in task.task_name and "conv2d" not in task.task_name]
    assert len(int8_packs) == 1  # the stem's map
    log = tmp_path / "log"
    tune_tasks(convs + int8_packs, spec, len(convs) + len(int8_packs), log, seed=0)
    times = pipeline.tuned_kernel_seconds(to_relax(torch.export.load(str(path))), spec, load_database(log, spec))
    measured = times.convs
    assert sorted(measured) == [1, 2]  # both quantized convs have both kernels' records
    # The pass packing the first conv's input; the second's is the first int8 conv itself, no pass.
    assert sorted(times.passes) == [1] and times.passes[1] > 0
    capsys.readouterr()
    assert cli_main(["compile", str(path), "-o", str(tmp_path / "tuned.so"), "--tuning-log", str(log),
                     "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for index, seconds in measured.items():
        assert set(seconds) == {BITSERIAL, INT8_DOT}
        if "int8-dot as Winograd" in lines[index]:  # a CPU without AMX: the record is the direct conv's
            seconds = {**seconds, INT8_DOT: seconds[INT8_DOT] * WINOGRAD_TIME_RATIO[cpu_kind(spec.target)]}
        faster = min(seconds, key=seconds.get)
        assert f" {faster} conv2d" in lines[index] and "kernel by tuning" in lines[index], lines[index]
    (out,) = runtime.run(tmp_path / "tuned.so", [x])
    (reference,) = runtime.run(build.compile_model(path, "host", tmp_path / "ref.so", kernels="bit-serial").library, [x])
    assert np.array_equal(out, reference)


class TwinConvs(nn.Module):
    """Two 2-bit convs of one geometry: the lowering shares one kernel function between them."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.stem, self.bn0 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv_a, self.bn_a = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv_b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        with torch.no_grad():
            for layer in (self.conv_a, self.conv_b):
                layer.weight.copy_(on_grid(layer.weight.shape, 2, g))

    def forward(self, x):
        stem = self.bn0(self.stem(x))
        # The float residual (the stem's map before its quantizer, read across its NCHW layout)
        # keeps conv_b's input pack out of conv_a's int8 function: a pack that reads only conv_a's
        # accumulators and quantized levels would fuse into it, and the two functions would differ.
        x = _quantize(self.bn_a(self.conv_a(_quantize(stem, 2))) + stem, 2)
        return self.bn_b(self.conv_b(x))


def test_layers_sharing_a_kernel_function_share_its_records(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "twins.pt2"
    torch.export.save(export_model(randomize_batch_norm(TwinConvs()).eval(), torch.rand(1, 1, 8, 8)), str(path))
    spec = resolve("host")
    mods = [pipeline.prepare_module(path, spec, kernels)[0] for kernels in pipeline.kernel_variants(spec)]
    convs = [task for task in extract_tasks(mods, spec) if "conv2d_a" in task.task_name]
    assert len(convs) == 2  # one function per kernel, named after layer 1
    log = tmp_path / "log"
    tune_tasks(convs, spec, len(convs), log, seed=0)
    measured = pipeline.tuned_kernel_seconds(to_relax(torch.export.load(str(path))), spec, load_database(log, spec)).convs
    assert sorted(measured) == [1, 2] and measured[1] == measured[2]


class StageEntry(nn.Module):
    """A residual stage's entry written in plain PyTorch: one quantized map read by a strided 3x3
    conv and by the 1x1 shortcut conv beside it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.stem, self.bn0 = nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.conv, self.bn_conv = nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(40)
        self.shortcut, self.bn_short = nn.Conv2d(24, 40, 1, stride=2, bias=False), nn.BatchNorm2d(40)
        with torch.no_grad():
            for layer in (self.conv, self.shortcut):
                layer.weight.copy_(on_grid(layer.weight.shape, 2, g))

    def forward(self, x):
        x = _quantize(self.bn0(self.stem(x)), 2)
        return self.bn_conv(self.conv(x)) + self.bn_short(self.shortcut(x))


# Tuned records for StageEntry's convs: int8-dot saves 0.5 ms on the 3x3 conv (layer 1) and
# bit-serial 0.1 ms on the 1x1 (layer 2).
STAGE_ENTRY_RECORDS = {1: {BITSERIAL: 1.0e-3, INT8_DOT: 0.5e-3}, 2: {BITSERIAL: 0.1e-3, INT8_DOT: 0.2e-3}}


def _packs(mod) -> list[str]:
    calls = [b.value.args[0].name_hint for b in mod["main"].body.blocks[0].bindings
             if "call_tir" in str(getattr(b.value, "op", ""))]
    return [name for name in calls if "bitpack" in name or "int8_levels" in name]


@pytest.mark.parametrize("pass_ms, kernels, packs", [
    # A second pass at 0.3 ms costs more than splitting STAGE_ENTRY_RECORDS' convs saves (0.1), at
    # 0.01 ms less.
    (0.3, [INT8_DOT, INT8_DOT], 1),
    (0.01, [INT8_DOT, BITSERIAL], 2),
    (None, [INT8_DOT, INT8_DOT], 1),  # no record of the pass: one kernel
])
def test_convs_reading_one_map_split_kernels_only_where_a_second_pass_pays(pass_ms, kernels, packs):
    model = randomize_batch_norm(StageEntry())
    mod = to_relax(export_model(model, torch.rand(1, 3, 10, 10)))
    passes = {} if pass_ms is None else {1: pass_ms * 1e-3, 2: pass_ms * 1e-3}
    lowered, reports = lower_wrpn(mod, resolve("host"), "auto", STAGE_ENTRY_RECORDS, passes)
    assert kernels_of(reports) == ["fp32", *kernels]
    assert len(_packs(lowered)) == packs
    if kernels[1] == INT8_DOT:
        assert "as layer 1 on the same input" in reports[2].reason, reports[2].reason


# Pack keys of two convs reading one map, whose lookup tables would differ (3x3 and 1x1 padding).
ONE_MAP = {i: {kernel: ("map", kernel) + ((2, padding) if kernel == LUT else ()) for kernel in KERNELS}
           for i, padding in ((0, (1, 1, 1, 1)), (1, (0, 0, 0, 0)))}


def test_convs_reading_one_map_are_settled_in_one_unit_of_cost():
    """Where every conv of the group has records and the log has the pass's, seconds decide; tuned
    records without the pass's keep the group on one kernel; where some convs lack records, the
    cost model's figures (with its price of a pass) settle them all."""
    def choice(kernel, seconds, estimated):
        return Choice(kernel, "why", seconds or {}, estimated)

    model_a, model_b = {BITSERIAL: 10.0, INT8_DOT: 5.0}, {BITSERIAL: 2.0, INT8_DOT: 4.0}
    by_model = [choice(INT8_DOT, None, model_a), choice(BITSERIAL, None, model_b), choice(BITSERIAL, None, model_b)]
    # int8 for both: 9; split: 7 plus the pass.
    for pass_estimate, kernels in ((3.0, [INT8_DOT, INT8_DOT]), (1.0, [INT8_DOT, BITSERIAL])):
        settled = settle_shared_inputs([SharedInput([0, 1], ONE_MAP, pass_estimate=pass_estimate)], by_model, {0: 5, 1: 7})
        assert [c.kernel for c in settled] == [*kernels, BITSERIAL]
        assert settled[0] is by_model[0] and settled[2] is by_model[2]
    assert settled[1] is by_model[1]
    settled = settle_shared_inputs([SharedInput([0, 1], ONE_MAP, pass_estimate=3.0)], by_model, {0: 5, 1: 7})[1]
    assert settled.why == ("why; int8-dot, as layer 5 on the same input: a second pass packing it (1.50x this "
                           "layer's bit-serial time) costs more than bit-serial saves")
    tuned = [choice(BITSERIAL, {BITSERIAL: 1e-3, INT8_DOT: 1.1e-3}, model_a),
             choice(INT8_DOT, {BITSERIAL: 2e-3, INT8_DOT: 1.95e-3}, model_b)]
    assert [c.kernel for c in settle_shared_inputs([SharedInput([0, 1], ONE_MAP, pass_estimate=0.0)], tuned)] == [
        BITSERIAL, BITSERIAL]  # the cost model's pass does not price seconds
    assert [c.kernel for c in settle_shared_inputs([SharedInput([0, 1], ONE_MAP, 1e-6)], tuned)] == [BITSERIAL, INT8_DOT]
    # One with records, one without: the cost model's figures for both (int8: 9 against 12).
    mixed = [choice(INT8_DOT, {BITSERIAL: 1e-3, INT8_DOT: 0.9e-3}, model_a), by_model[1]]
    assert [c.kernel for c in settle_shared_inputs([SharedInput([0, 1], ONE_MAP, 1e-6, 3.0)], mixed)] == [INT8_DOT, INT8_DOT]


def test_lookup_tables_are_shared_only_where_weight_bits_and_padding_agree():
    """A 3x3 and a 1x1 conv on lookups still build two tables passes (their padding differs), and
    the cost model's lookup costs hold them: lookups for the 3x3 beside int8 for the 1x1 adds one
    int8 pass, which pays where the 1x1's lookups cost more than that."""
    three = Choice(LUT, "why", estimated={BITSERIAL: 10.0, INT8_DOT: 5.0, LUT: 3.0})
    one = Choice(INT8_DOT, "why", estimated={BITSERIAL: 2.0, INT8_DOT: 1.0, LUT: 4.0})
    # lut + int8: 4 + a pass; all lut: 7; all int8: 6.
    for pass_estimate, kernels in ((1.0, [LUT, INT8_DOT]), (2.5, [INT8_DOT, INT8_DOT])):
        group = SharedInput([0, 1], ONE_MAP, pass_estimate=pass_estimate)
        assert [c.kernel for c in settle_shared_inputs([group], [three, one])] == kernels


def test_a_split_stage_entry_computes_what_one_kernel_does(tmp_path):
    """Two passes packing one map (each conv on its own kernel) give bit-serial's output bit for bit."""
    model = randomize_batch_norm(StageEntry())
    x = torch.rand(2, 3, 10, 10)
    mod = to_relax(export_model(model, x))
    spec = resolve("host")
    outputs, kernels = {}, {}
    for name, passes in (("split", {1: 1e-9, 2: 1e-9}), ("bit-serial", None)):
        lowered, reports = (lower_wrpn(mod, spec, "auto", STAGE_ENTRY_RECORDS, passes) if passes
                            else lower_wrpn(mod, spec, BITSERIAL))
        vm = tvm.relax.VirtualMachine(pipeline.build_module(lowered, spec), tvm.cpu())
        outputs[name] = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
        kernels[name] = kernels_of(reports)
    assert kernels == {"split": ["fp32", INT8_DOT, BITSERIAL], "bit-serial": ["fp32", BITSERIAL, BITSERIAL]}
    assert np.array_equal(outputs["split"], outputs["bit-serial"])
