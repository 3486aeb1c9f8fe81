"""Cycles per 128-bit AND + popcount + accumulate in the hot loop of the ARM bit-serial kernels,
by llvm-mca (LLVM 14) on cortex-a53 (rasp3b), cortex-a72 (rasp4) and cortex-a76 (rasp5).

Kernels: ResNet-18's 3x3 stride-1 convs (56x56x64, 28x28x128, 14x14x256, 7x7x512 at 1x width;
batch 1) at 2x width 2/2 and 1x width 1/1, and 2x 4/2 and 4/4 (activation planes weighed in bytes),
with the 64-bit words models use on ARM. Each is compiled for each board twice: with the generic CPU
template at NEON's int32 width (what rasp* compiled with before issue 21: `before`) and with the
aarch64 templates (`after`). The hot loop is the innermost loop (a backward branch with no other
inside it) with the most `and v.16b` (the slowest of them where LLVM made several copies); each
`cnt` is one 128-bit AND + popcount, so cycles per 128 bits = llvm-mca's cycles per iteration / its
`cnt` count; the accumulates per `cnt` are counted too (uadalp .8h, or udot .4s where rasp5's
dotprod takes it). llvm-mca models the core's pipes, not its caches: these are in-L1 figures. LLVM
14's cortex-a76 model is close to its cortex-a72 one (same dispatch width and NEON pipes), so those
two columns agree.

Also ResNet-18's fused epilogue bitpacks at 2x width, and 1x at 1 bit (`measure_bitpacks`): llvm-mca
cycles per 64-bit word before (the generic template) and after (levels staged per pixel, words gathered
by NEON); and the 2x 2/2 model's own fused bitpacks as the lowering emits them, after
(`measure_model_bitpacks`).

  python benchmarks/arm_hot_loops.py      # writes benchmarks/results/arm_hot_loops.{json,md}
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BOARDS = {"rasp3b": "cortex-a53", "rasp4": "cortex-a72", "rasp5": "cortex-a76"}
LAYERS = [(56, 64), (28, 128), (14, 256), (7, 512)]  # (image size, channels) at 1x width
COLUMN_LAYERS = [(56, 64), (14, 16)]  # first quantized layers (ResNet-18, MNIST smallcnn) at 1x width
CONFIGS = [(2, 2, 2), (1, 1, 1), (2, 4, 2), (2, 4, 4)]  # (width, abits, wbits)
PACK_CONFIGS = [(2, 2), (2, 4), (1, 1)]  # (width, abits)
WORD_BITS = 64
MCA_ITERATIONS = 200

_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_BRANCH = re.compile(r"^(b|b\.\w+|cbn?z|tbn?z)$")
_TARGET = re.compile(r"\b([0-9a-f]+) <[^>]*>")
_SYMBOL = re.compile(r"^([0-9a-f]+) <[^>]*>:$")


def _listing_loops(library: Path) -> tuple[list, list]:
    """(code as (address, instruction text), loop spans (start, end)) of the library's .text."""
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", "-j", ".text", str(library)],
                             capture_output=True, text=True, check=True).stdout
    code, backward, symbol_start = [], [], 0
    for line in listing.splitlines():
        symbol = _SYMBOL.match(line)
        if symbol:
            symbol_start = int(symbol[1], 16)
        match = _LINE.match(line)
        if not match:
            continue
        address, mnemonic, operands = int(match[1], 16), match[2], match[3].split("//")[0].strip()
        target = _TARGET.search(operands)
        # A branch back within the same symbol: a loop (not a tail call to an earlier function).
        if target and _BRANCH.match(mnemonic) and symbol_start <= int(target[1], 16) <= address:
            backward.append((int(target[1], 16), address))
        code.append((address, f"{mnemonic} {_TARGET.sub('wrpn_target', operands)}".strip()))
    return code, backward


def innermost_loops(library: Path) -> list[list[str]]:
    """The instruction texts (as llvm-mca reads them) of each innermost compute loop of the
    library: the span from a backward branch's target to the branch, with no other such span
    inside and no call or return."""
    code, backward = _listing_loops(library)
    spans = [(start, end) for start, end in backward
             if not any(start <= s and e <= end and (s, e) != (start, end) for s, e in backward)]
    loops = [[text for address, text in code if start <= address <= end] for start, end in spans]
    # Spans that call or return are the runtime's retry and launch code, not compute loops.
    return [loop for loop in loops if not any(re.match(r"(bl|blr|ret)\b", insn) for insn in loop)]


def vector_counts(loop: list[str]) -> int:
    return sum(bool(re.match(r"cnt v\d+\.16b", insn)) for insn in loop)


def _ands(loop: list[str]) -> int:
    return sum(bool(re.match(r"and v\d+\.16b", insn)) for insn in loop)


def hot_loops(loops: list[list[str]]) -> list[list[str]]:
    """The loops with the most 128-bit ANDs: the bit-serial product, as LLVM may have split it
    (one copy per kernel column, say). The 1-bit path's activation level sums have no AND."""
    most = max(_ands(loop) for loop in loops)
    return [loop for loop in loops if _ands(loop) == most]


def stack_stores(loop: list[str]) -> list[str]:
    return [insn for insn in loop if re.match(r"st(r|p|ur)\b.*\[sp", insn)]


def mca_cycles(loop: list[str], cpu: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".s") as source:
        source.write("\n".join(loop) + "\n")
        source.flush()
        report = subprocess.run(["llvm-mca", "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}",
                                 f"-iterations={MCA_ITERATIONS}", source.name], capture_output=True, text=True)
    if "error" in report.stderr:
        raise RuntimeError(f"llvm-mca could not read the loop: {report.stderr.strip()[:300]}")
    return int(re.search(r"Total Cycles:\s+(\d+)", report.stdout)[1]) / MCA_ITERATIONS


def conv_func(size: int, channels: int, abits: int, wbits: int):
    from tvm import te

    from wrpn_tvm import ops

    words = -(-channels // WORD_BITS)
    data = te.placeholder((1, size, size, abits, words), f"uint{WORD_BITS}", name="data")
    weight = te.placeholder((3, 3, wbits, words, channels), f"uint{WORD_BITS}", name="weight")
    return te.create_prim_func([data, weight, ops.bitserial_conv2d(data, weight, abits, wbits, 1, 1)])


def compile_library(func, board: str, schedule: str, path: Path) -> Path:
    from tvm.s_tir import Schedule
    from tvm.support import cc

    import schedules
    from schedules import cpu
    from wrpn_tvm.pipeline import compile_prim_func
    from wrpn_tvm.targets import resolve

    if schedule == "before":
        sch = Schedule(func)
        cpu.schedule_function(sch, lanes=4)  # the generic template at NEON's int32 width
        func = sch.mod["main"].with_attr(schedules.SCHEDULED_ATTR, True)
    elif schedule == "unstaged":
        from schedules import arm_cpu

        sch = Schedule(func)  # the aarch64 bitpack template with its levels inlined, none staged
        cpu.schedule_kernels(sch, lambda sch, block, rule: arm_cpu.bitpack(sch, block, tuning=False))
        func = sch.mod["main"].with_attr(schedules.SCHEDULED_ATTR, True)
    compile_prim_func(func, resolve(board)).export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


def measure(folder: Path) -> list[dict]:
    rows = []
    for width, abits, wbits in CONFIGS:
        for size, channels in LAYERS:
            for board, cpu_name in BOARDS.items():
                row = {"layer": f"{size}x{size}x{channels * width}", "width": width, "abits": abits, "wbits": wbits,
                       "board": board, "cpu": cpu_name}
                for schedule in ("before", "after"):
                    library = compile_library(conv_func(size, channels * width, abits, wbits), board, schedule,
                                              folder / f"{size}-{channels}-{width}-{abits}{wbits}-{board}-{schedule}.so")
                    loops = innermost_loops(library)
                    copies = hot_loops(loops)
                    # The slowest copy of the hot loop speaks for the kernel.
                    hot = max(copies, key=lambda loop: mca_cycles(loop, cpu_name) / vector_counts(loop))
                    counts = vector_counts(hot)
                    row[schedule] = {
                        "cycles_per_128_bits": round(mca_cycles(hot, cpu_name) / counts, 3),
                        "hot_loop_copies": len(copies),
                        "cnt": counts,
                        "uadalp_8h": sum(bool(re.match(r"uadalp v\d+\.8h", i)) for i in hot),
                        "udot_4s": sum(bool(re.match(r"udot v\d+\.4s", i)) for i in hot),
                        "uaddlp": sum(i.startswith("uaddlp") for i in hot),
                        "uaddlp_2d": sum(bool(re.match(r"uaddlp v\d+\.2d", i)) for i in hot),
                        "hot_loop_stack_stores": len(stack_stores(hot)),
                        "innermost_loops_with_stack_stores": sum(bool(stack_stores(loop)) for loop in loops),
                    }
                print(f"{row['layer']:>14} {width}x {abits}/{wbits} {cpu_name:>10}: "
                      f"{row['before']['cycles_per_128_bits']:.2f} -> {row['after']['cycles_per_128_bits']:.2f}",
                      file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def epilogue_bitpack(size: int, channels: int, abits: int):
    """A fused epilogue bitpack as the model lowering emits it (wrpn_tvm/lowering/rewrite.py):
    a conv's NHWC int32 accumulator, its per-channel affine, the levels (NCHW, float) and the pack
    of 64-bit words; int64 indices, as Relax's emit_te gives them."""
    from tvm import te, tirx

    from wrpn_tvm import ops

    acc = te.placeholder((1, size, size, channels), "int32", name="acc")
    scale = te.placeholder((channels,), "float32", name="scale")
    offset = te.placeholder((channels,), "float32", name="offset")
    affine = te.compute((1, channels, size, size),
                        lambda n, c, h, w: acc[n, h, w, c].astype("float32") * scale[c] + offset[c], name="wrpn_epilogue")
    top = tirx.const(2**abits - 1, "float32")
    levels = te.compute(affine.shape, lambda *i: tirx.nearbyint(
        tirx.min(tirx.max(affine(*i), tirx.const(0.0, "float32")), tirx.const(1.0, "float32")) * top), name="wrpn_levels")
    pack = ops.pack_activation(levels, abits, 64, quantize=False)
    return te.create_prim_func([acc, scale, offset, pack], index_dtype_override="int64")


def column_bitpack(height: int, width: int, channels: int, abits: int, batch: int = 1):
    """The first quantized layer's bitpack as the model lowering emits it: NCHW float input (the
    full-precision stem's output), its levels, and the pack of 64-bit words read with the column
    fastest; int64 indices."""
    from tvm import te, tirx

    from wrpn_tvm import ops

    x = te.placeholder((batch, channels, height, width), "float32", name="x")
    top = tirx.const(2**abits - 1, "float32")
    levels = te.compute(x.shape, lambda *i: tirx.nearbyint(
        tirx.min(tirx.max(x(*i), tirx.const(0.0, "float32")), tirx.const(1.0, "float32")) * top), name="wrpn_levels")
    pack = ops.pack_activation(levels, abits, 64, quantize=False)
    return te.create_prim_func([x, pack], index_dtype_override="int64")


_SCALAR_STORE = re.compile(r"(str|stur|stp) ([xdq])\d+.*\[(x\d+)")  # output words: not the stack's
_VECTOR_STORE = re.compile(r"st[1-4] \{([^}]*)\}(\[\d+\])?, \[(x\d+)")
_LOAD_BASE = re.compile(r"ld\S* .*\[(x\d+)")
_REGISTER_BYTES = {"x": 8, "d": 8, "q": 16}
_ARRANGEMENT_BYTES = {"8b": 8, "16b": 16, "4h": 8, "8h": 16, "2s": 8, "4s": 16, "1d": 8, "2d": 16,
                      "b": 1, "h": 2, "s": 4, "d": 8}  # a whole register, or one lane ({v0.d}[1])


def _store(insn: str) -> "tuple[str, int] | None":
    """(base register, bytes) of a store through a general register, or None."""
    if match := _SCALAR_STORE.match(insn):
        return match[3], _REGISTER_BYTES[match[2]] * (2 if match[1] == "stp" else 1)
    if match := _VECTOR_STORE.match(insn):
        registers = []
        for group in match[1].split(","):  # "v0.4s" or a range "v16.4s-v19.4s"
            first, _, last = group.strip().partition("-")
            count = int(last.split(".")[0][1:]) - int(first.split(".")[0][1:]) + 1 if last else 1
            registers += [first.split(".")[1]] * count
        return match[3], sum(_ARRANGEMENT_BYTES[arrangement] for arrangement in registers)
    return None


def _stored_words(code: list[str]) -> float:
    """64-bit words a loop stores through a pointer that it does not load through, from the store
    on around the loop until the register is set again: the output, not a staging buffer (levels
    held in memory that the pack reads back, perhaps at the top of the next iteration)."""
    words = 0.0
    for index, insn in enumerate(code):
        store = _store(insn)
        if store is None:
            continue
        base, size = store
        for later in code[index + 1:] + code[:index]:
            if re.match(rf"\S+ {base}\b", later):  # set again: whatever it addresses next is not this
                words += size / 8
                break
            if (load := _LOAD_BASE.match(later)) and load[1] == base:
                break
        else:
            words += size / 8
    return words


def bitpack_cycles_per_word(library: Path, channels: int, cpu: str, pixels: int = 1, level_op: str = "scvtf",
                            words_per_pixel: "int | None" = None) -> float:
    """llvm-mca cycles per 64-bit word of a fused bitpack: per iteration of each innermost loop
    around word stores (the slowest copy), over the words it stores. A loop nested in it (the
    staged levels of `pixels` pixels, a lane per `level_op` lane: 4 per `scvtf v.4s` of an
    accumulator, 2 per `frinti v.2s` of a column pair) counts channels x pixels / its lanes times;
    one without level ops (the pack of a pixel whose levels were staged with others') counts as
    many times as it takes to store the pixels' words, `words_per_pixel` each."""
    code, spans = _listing_loops(library)
    text = lambda start, end: [insn for address, insn in code if start <= address <= end]
    worst = 0.0
    for start, end in spans:
        nested = [(s, e) for s, e in spans if start <= s and e <= end and (s, e) != (start, end)]
        own = [insn for address, insn in code if start <= address <= end
               and not any(s <= address <= e for s, e in nested)]
        if any(re.match(r"(bl|blr|ret)\b", insn) for insn in own) or \
                any(any(s2 <= s and e <= e2 and (s, e) != (s2, e2) for s2, e2 in nested) for s, e in nested):
            continue
        cycles, words = mca_cycles(own, cpu), _stored_words(own)
        for s, e in nested:
            loop = text(s, e)
            lanes = sum(int(match[1]) for insn in loop if (match := re.match(level_op + r" v\d+\.([24])s", insn)))
            loop_words = 0.0 if lanes or words_per_pixel is None else _stored_words(loop)
            if lanes:
                cycles += mca_cycles(loop, cpu) * channels * pixels / lanes
            elif loop_words:
                # the packs of the pixels whose levels were staged together (LLVM may unroll it)
                cycles += mca_cycles(loop, cpu) * pixels * words_per_pixel / loop_words
                words += pixels * words_per_pixel
            else:
                words = 0  # not a pack of staged levels: its nested loops are read on their own
                break
        if words:
            worst = max(worst, cycles / words)
    return worst


def pack_figures(library: Path, channels: int, cpu: str, pixels: int = 1, level_op: str = "scvtf",
                 planes: "int | None" = None) -> dict:
    """A compiled bitpack's llvm-mca cycles per word (`bitpack_cycles_per_word`; `planes` where
    `pixels` pixels' words are stored in a loop of their own) and innermost loops with stack stores."""
    words_per_pixel = None if planes is None else planes * -(-channels // WORD_BITS)
    cycles = bitpack_cycles_per_word(library, channels, cpu, pixels, level_op, words_per_pixel)
    return {"cycles_per_word": round(cycles, 2),
            "innermost_loops_with_stack_stores": sum(bool(stack_stores(loop)) for loop in innermost_loops(library))}


def staged_pixels(func) -> int:
    """The pixels whose levels one trip of a fused bitpack's staged levels loop computes: several
    where a pixel's channels make too few interleaved steps (arm_cpu.LEVELS_INTERLEAVE)."""
    from tvm.s_tir import Schedule

    from schedules import arm_cpu, staged_bitpack

    sch = Schedule(func)
    levels = staged_bitpack.levels_to_stage(sch, sch.get_sblock("wrpn_bitpack"))
    return (levels is not None and staged_bitpack.interleaved_pixels(sch, levels, arm_cpu.LEVELS_INTERLEAVE)) or 1


def measure_bitpacks(folder: Path) -> list[dict]:
    """ResNet-18's fused epilogue bitpacks at 2x width, 2 and 4 bits, and at 1x width, 1 bit (the
    1x 1/1 model's), before and after."""
    rows = []
    for width, abits in PACK_CONFIGS:
        for size, channels in LAYERS:
            channels = int(channels * width)
            for board, cpu_name in BOARDS.items():
                row = {"layer": f"{size}x{size}x{channels}", "abits": abits, "board": board, "cpu": cpu_name}
                for schedule in ("before", "after"):
                    func = epilogue_bitpack(size, channels, abits)
                    library = compile_library(func, board, schedule,
                                              folder / f"pack-{size}-{channels}-{abits}-{board}-{schedule}.so")
                    pixels = staged_pixels(func) if schedule == "after" else 1
                    row[schedule] = pack_figures(library, channels, cpu_name, pixels, planes=abits)
                print(f"pack {row['layer']:>14} a{abits} {cpu_name:>10}: {row['before']['cycles_per_word']:.1f} -> "
                      f"{row['after']['cycles_per_word']:.1f}", file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def measure_column_bitpacks(folder: Path) -> list[dict]:
    """The first quantized layer's pack (NCHW float input, `column_bitpack`): ResNet-18's 56x56 at
    1x, 2x and 3x width and MNIST smallcnn's 14x14 at 1x, 2x, 3x, before and after."""
    from schedules.staged_bitpack import column_pixels

    rows = []
    for size, base in COLUMN_LAYERS:
        for width in (1, 2, 3):
            for abits in (1, 2, 4):
                channels = base * width
                pixels = column_pixels(size)
                for board, cpu_name in BOARDS.items():
                    row = {"layer": f"{size}x{size}x{channels}", "abits": abits, "board": board, "cpu": cpu_name,
                           "pixels": pixels}
                    for schedule, template in (("before", "unstaged"), ("after", "after")):
                        library = compile_library(column_bitpack(size, size, channels, abits), board, template,
                                                  folder / f"columns-{size}-{channels}-{abits}-{board}-{schedule}.so")
                        # The staged levels' loop: a lane per frinti lane, `pixels` pixels per trip.
                        row[schedule] = (pack_figures(library, channels, cpu_name, pixels, r"frint[a-z]")
                                         if schedule == "after" else pack_figures(library, channels, cpu_name))
                    rows.append(row)
                    print(f"column pack {row['layer']:>12} {abits} {cpu_name:>10}: {row['before']['cycles_per_word']:.1f}"
                          f" -> {row['after']['cycles_per_word']:.1f}", file=sys.stderr, flush=True)
    return rows


def model_bitpacks(width: float, abits: int, wbits: int) -> dict:
    """name -> PrimFunc of ResNet-18's (224x224) fused epilogue bitpacks as the lowering emits them
    (bit-serial; the same for every board), residual glue and quantizer steps included."""
    import torch
    import tvm

    from wrpn_tvm.kernel_kinds import BITSERIAL
    from wrpn_tvm.nn import build_model, export_model
    from wrpn_tvm.pipeline import fuse_module, prepare_module
    from wrpn_tvm.targets import resolve

    torch.manual_seed(0)
    model = build_model("resnet18", width, abits, wbits, num_classes=1000, in_channels=3, image_size=224).eval()
    with tempfile.TemporaryDirectory(prefix="arm-hot-loops-model-") as folder:
        program = Path(folder) / "model.pt2"
        torch.export.save(export_model(model, torch.rand(1, 3, 224, 224)), str(program))
        mod, _, _ = prepare_module(program, resolve("rasp4"), BITSERIAL)
    return {gv.name_hint: func.with_attr("global_symbol", "main")
            for gv, func in fuse_module(mod, resolve("rasp4")).functions.items()
            if isinstance(func, tvm.tirx.PrimFunc) and "epilogue_bitpack" in gv.name_hint}


def measure_model_bitpacks(folder: Path) -> list[dict]:
    """ResNet-18 2x 2/2's own fused bitpacks (the aarch64 templates), per board: what a model runs,
    where `measure_bitpacks` times a hand-written epilogue of one shape."""
    from tvm.s_tir import Schedule

    rows = []
    for name, func in sorted(model_bitpacks(2.0, 2, 2).items()):
        sch = Schedule(func)
        planes, words = (int(d) for d in sch.get(sch.get_sblock("wrpn_bitpack")).writes[0].source.shape[-2:])
        pixels = staged_pixels(func)  # the same schedule on every board
        for board, cpu_name in BOARDS.items():
            library = compile_library(func, board, "after", folder / f"model-{name[-40:]}-{board}.so")
            rows.append({"function": name, "channels": words * WORD_BITS, "planes": planes, "board": board,
                         "cpu": cpu_name, **pack_figures(library, words * WORD_BITS, cpu_name, pixels, planes=planes)})
            print(f"model pack {name[-40:]:>40} {cpu_name:>10}: {rows[-1]['cycles_per_word']:.1f}",
                  file=sys.stderr, flush=True)
    return rows


def _section(title: str, intro: list[str], columns: list[str]) -> list[str]:
    """A markdown section's lines up to its table's rows: title, text, header."""
    return ["", f"## {title}", "", *intro, "", "| " + " | ".join(columns) + " |",
            "| " + " | ".join(["---"] * len(columns)) + " |"]


def markdown(rows: list[dict], versions: str) -> str:
    lines = [
        "# ARM bit-serial hot loops: llvm-mca cycles per 128-bit AND + popcount + accumulate",
        "",
        "Command: `python benchmarks/arm_hot_loops.py`. " + versions,
        "",
        "ResNet-18 3x3 stride-1 convs, batch 1, 64-bit words. `before`: the generic CPU template at NEON's",
        "int32 width (what rasp* used before issue 21); `after`: the aarch64 templates (schedules/arm_cpu.py,",
        "schedules/neon.py). Cycles are llvm-mca 14's steady state for the hottest innermost loop (the slowest copy",
        "where LLVM made several) divided by",
        "its `cnt v.16b` count; `widen` is `uaddlp` per `cnt` in that loop (at 4/4, 2 of .8h per 16 `cnt`: the",
        "last fold in 16-bit lanes); `uadalp` and `udot` are those accumulates per `cnt` (udot .4s with a",
        "ones vector: cortex-a76, rasp5's dotprod); `spills` counts innermost loops with stack stores in the",
        "kernel. In-L1 figures: llvm-mca models pipes, not caches. LLVM 14 models cortex-a76 much like",
        "cortex-a72 (same NEON pipes), so their columns agree; on cortex-a53 (in-order, one 128-bit NEON",
        "op per cycle) the floor for and + cnt + accumulate is 3 cycles.",
        "",
        "| layer | bits | core | before cycles | after cycles | before widen | after widen | after uadalp per cnt | after udot per cnt | before spills | after spills |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows["convs"]:
        before, after = row["before"], row["after"]
        lines.append(
            f"| {row['layer']} | {row['width']}x {row['abits']}/{row['wbits']} | {row['cpu']} "
            f"| {before['cycles_per_128_bits']:.2f} | {after['cycles_per_128_bits']:.2f} "
            f"| {before['uaddlp'] / before['cnt']:.2f} | {after['uaddlp'] / after['cnt']:.2f} "
            f"| {after['uadalp_8h'] / after['cnt']:.2f} | {after['udot_4s'] / after['cnt']:.2f} "
            f"| {before['innermost_loops_with_stack_stores']} | {after['innermost_loops_with_stack_stores']} |")
    lines += _section("Fused bitpacks: llvm-mca cycles per 64-bit word", [
        "ResNet-18's fused epilogue bitpacks at 2x width (1x at 1 bit: the 1x 1/1 model's; a conv's NHWC int32",
        "accumulator, per-channel affine, levels, pack; `epilogue_bitpack`), 64-bit words. `before`: the generic",
        "CPU template (each plane's word recomputes its 64 channels' levels inline); `after`: each pixel's levels once into a local buffer",
        "(in q-register steps, 4 unrolled a trip, where they interleave: `staged_bitpack.Interleave`; below 192",
        "channels 4 pixels' levels a trip), the words gathered from level bytes by `neon.pack_word`. Cycles per",
        "iteration of the loop around the word stores (nested loops: the staged levels, once per trip; the",
        "pixels' packs, as often as their words take) over the words it stores (`bitpack_cycles_per_word`);",
        "`spills` counts innermost loops with stack stores.",
    ], ["layer", "abits", "core", "before cycles per word", "after cycles per word", "before spills", "after spills"])
    for row in rows["bitpacks"]:
        before, after = row["before"], row["after"]
        lines.append(f"| {row['layer']} | {row['abits']} | {row['cpu']} | {before['cycles_per_word']:.1f} "
                     f"| {after['cycles_per_word']:.1f} | {before['innermost_loops_with_stack_stores']} "
                     f"| {after['innermost_loops_with_stack_stores']} |")
    lines += _section("First-layer bitpacks (NCHW float input): llvm-mca cycles per 64-bit word", [
        "The first quantized layer's pack reads the full-precision stem's NCHW output, a channel's pixels",
        "contiguous (`column_bitpack`): ResNet-18's 56x56 and MNIST smallcnn's 14x14 at 1x, 2x and 3x width.",
        "`before`: the aarch64 template with the levels inlined (a q register of words for 2 pixels, each",
        "channel's level recomputed per plane and word); `after`: the levels of 4 pixels (2 on 14-pixel rows)",
        "computed once into a local buffer, vectorized over the pixels, and each plane's words built by",
        "`sli` chains, a lane per pixel (`neon.pack_columns`). Cycles as above, the staged levels' loop",
        "counted per `frinti` lane; `spills` counts innermost loops with stack stores.",
    ], ["layer", "abits", "core", "pixels per group", "before cycles per word", "after cycles per word",
        "before spills", "after spills"])
    for row in rows["column_bitpacks"]:
        before, after = row["before"], row["after"]
        lines.append(f"| {row['layer']} | {row['abits']} | {row['cpu']} | {row['pixels']} "
                     f"| {before['cycles_per_word']:.1f} | {after['cycles_per_word']:.1f} "
                     f"| {before['innermost_loops_with_stack_stores']} | {after['innermost_loops_with_stack_stores']} |")
    lines += _section("ResNet-18 2x 2/2's own fused bitpacks", [
        "The model's 11 `*wrpn_epilogue_bitpack*` functions as the lowering emits them (the quantizer's",
        "steps and the residual glue included; `model_bitpacks`), aarch64 templates: llvm-mca cycles per",
        "64-bit word as above, and innermost loops with stack stores.",
    ], ["function", "channels", "planes", "core", "cycles per word", "spills"])
    lines += [f"| {row['function']} | {row['channels']} | {row['planes']} | {row['cpu']} | {row['cycles_per_word']:.1f} "
              f"| {row['innermost_loops_with_stack_stores']} |" for row in rows["model_bitpacks"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "arm_hot_loops")
    args = parser.parse_args()
    import tvm

    mca_version = re.search(r"LLVM version \S+", subprocess.run(["llvm-mca", "--version"], capture_output=True,
                                                                text=True).stdout)[0]
    versions = f"TVM {tvm.__version__}; {mca_version}."
    with tempfile.TemporaryDirectory(prefix="arm-hot-loops-") as folder:
        rows = {"convs": measure(Path(folder)), "bitpacks": measure_bitpacks(Path(folder)),
                "column_bitpacks": measure_column_bitpacks(Path(folder)),
                "model_bitpacks": measure_model_bitpacks(Path(folder))}
    args.out.with_suffix(".json").write_text(json.dumps({"versions": versions, "rows": rows["convs"],
                                                         "bitpacks": rows["bitpacks"],
                                                         "column_bitpacks": rows["column_bitpacks"],
                                                         "model_bitpacks": rows["model_bitpacks"]}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, versions))


if __name__ == "__main__":
    main()
