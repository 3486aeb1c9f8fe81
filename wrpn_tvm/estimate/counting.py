"""The counting run: how many times each piece of a library's machine code runs in one inference.

The library runs once under qemu-user (the emulated Pi's aarch64 Python for ARM libraries; this
machine's own Python under qemu-x86_64 for x86 ones) with a small TCG plugin that counts the
executions of every translation block. TVM runs on one thread there, so the counts are those of
the whole inference whatever the thread count on the board (a parallel loop's iterations are
split between threads, never repeated). Counts do not depend on the input: the kernels have no
data-dependent control flow.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import WrpnError
from ..remote import daemons

# qemu's plugin header is not packaged in Debian 12: the few entry points of its stable C API
# (version 1, qemu 7.2) are declared here.
PLUGIN_SOURCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One counter per (first, last instruction) of a block; a block translated again shares it. */
#define SLOTS (1u << 22)
struct block { uint64_t first, last, count; };
static struct block *blocks;
static const char *out_path;

static struct block *slot(uint64_t first, uint64_t last) {
    uint64_t hash = (first ^ (last << 7)) * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = (uint32_t)(hash >> 42) & (SLOTS - 1);; i = (i + 1) & (SLOTS - 1)) {
        struct block *b = &blocks[i];
        if (b->last == 0) { b->first = first; b->last = last; return b; }
        if (b->first == first && b->last == last) return b;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t last = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, n - 1));
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                             &slot(qemu_plugin_tb_vaddr(tb), last)->count, 1);
}

static void write_counts(qemu_plugin_id_t id, void *unused) {
    FILE *out = fopen(out_path, "w");
    if (!out) return;
    for (uint32_t i = 0; i < SLOTS; i++)
        if (blocks[i].count) fprintf(out, "%lx %lx %lu\n", blocks[i].first, blocks[i].last, blocks[i].count);
    fclose(out);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0) out_path = argv[i] + 4;
    if (!out_path) return -1;
    blocks = calloc(SLOTS, sizeof *blocks);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
"""

# Runs in the emulated process: TVM runtime and numpy only. Writes where the library was mapped.
GUEST_SCRIPT = """
import json, sys
import numpy as np, tvm
from tvm import relax
maps_out, library = sys.argv[1], sys.argv[2]
inputs = json.load(open(library + ".json"))["inputs"]
vm = relax.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
vm["main"](*[tvm.runtime.tensor(np.random.rand(*i["shape"]).astype(i["dtype"])) for i in inputs])
open(maps_out, "w").write(open("/proc/self/maps").read())
"""

# Calls each candidate kernel once. Only tvm_ffi and the TVM runtime library are loaded, not the
# `tvm` package (which loads the whole compiler): under qemu that start-up is 10 s, not 25 s.
# Buffers are 64-byte aligned, as TVM's own allocator makes them.
CANDIDATE_SCRIPT = """
import ctypes, json, os, sys
import numpy as np, tvm_ffi
ctypes.CDLL(os.path.join(os.path.dirname(os.path.dirname(tvm_ffi.__file__)), "tvm", "lib", "libtvm_runtime.so"),
            mode=ctypes.RTLD_GLOBAL)
maps_out, jobs_file, errors_out = sys.argv[1:4]
rng = np.random.default_rng(0)

def argument(kind, dtype, shape):
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    array = raw[start:start + size].view(dtype).reshape(shape)
    array[...] = rng.random(shape) if dtype.kind == "f" else rng.integers(0, 4, shape)
    return array

errors, alive = [], []
for library, args_info in json.load(open(jobs_file)):
    try:
        module = tvm_ffi.load_module(library)
        arrays = [argument(*info) for info in args_info]
        alive.append((module, arrays))  # a library stays mapped until the maps are written
        module[module.entry_name](*[tvm_ffi.from_dlpack(a) for a in arrays])
        errors.append(None)
    except Exception as err:
        errors.append((type(err).__name__ + ": " + str(err)).strip().splitlines()[0][:300])
json.dump(errors, open(errors_out, "w"))
open(maps_out, "w").write(open("/proc/self/maps").read())
"""

RUN_TIMEOUT_S = 3600  # a ResNet-18 under qemu with counters takes minutes


def plugin() -> Path:
    """The plugin, compiled once per source version into the state folder."""
    digest = hashlib.sha1(PLUGIN_SOURCE.encode()).hexdigest()[:12]
    path = daemons.state_dir() / "estimate" / f"tb-count-{digest}.so"
    if path.is_file():
        return path
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise WrpnError("no C compiler (cc) to build the qemu counting plugin: install Debian's gcc")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source, staged = Path(tmp) / "tb_count.c", Path(tmp) / path.name
        source.write_text(PLUGIN_SOURCE)
        result = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(staged), str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise WrpnError(f"building the qemu counting plugin failed: {result.stderr.strip().splitlines()[-1:]}")
        os.replace(staged, path)
    return path


def _guest_command(arm: bool) -> list:
    if arm:
        from ..remote import emulator

        if not emulator.is_prepared():
            raise WrpnError("the emulated device is not prepared: run scripts/setup.sh (the counting run uses its aarch64 Python)")
        return [str(emulator.python_wrapper())]
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise WrpnError("qemu-x86_64 not found: install Debian's qemu-user (scripts/setup.sh does)")
    return [qemu, "-cpu", "max", sys.executable]


def block_counts(library: Path, arm: bool) -> list:
    """(first, last instruction offset in the library, executions) of every block of the library's
    code that ran during one inference."""
    library = library.resolve()
    with tempfile.TemporaryDirectory(prefix="wrpn-count-") as tmp:
        maps, counted = _counting_run(GUEST_SCRIPT, [str(library)], arm, Path(tmp), RUN_TIMEOUT_S, library.name)
        return _in_library(maps, counted, library)


def candidate_counts(jobs: list, arm: bool, timeout: float) -> tuple:
    """One counting run of several kernel libraries (MetaSchedule candidates), each entry function
    called once on random arguments. `jobs`: (library path, MetaSchedule args_info JSON). Returns
    the blocks of each library as block_counts does, and per library None or the error of its call."""
    libraries = [Path(library).resolve() for library, _ in jobs]
    with tempfile.TemporaryDirectory(prefix="wrpn-count-") as tmp:
        jobs_file, errors_file = Path(tmp) / "jobs.json", Path(tmp) / "errors.json"
        jobs_file.write_text(json.dumps([[str(library), args] for library, (_, args) in zip(libraries, jobs)]))
        maps, counted = _counting_run(CANDIDATE_SCRIPT, [str(jobs_file), str(errors_file)], arm, Path(tmp), timeout,
                                      f"{len(jobs)} candidate kernel(s)")
        errors = json.loads(errors_file.read_text())
        return [[] if error else _in_library(maps, counted, library) for library, error in zip(libraries, errors)], errors


def _counting_run(script: str, args: list, arm: bool, tmp: Path, timeout: float, what: str) -> tuple:
    """Run a guest script (its first argument: where to write /proc/self/maps) under qemu with the
    counting plugin; the maps text and every counted (first, last absolute address, executions)."""
    counts_file, maps_file = tmp / "counts", tmp / "maps"
    env = dict(os.environ, TVM_NUM_THREADS="1", WRPN_QEMU_CPU="max",
               QEMU_PLUGIN=f"file={plugin()},out={counts_file}")
    try:
        result = subprocess.run(_guest_command(arm) + ["-c", script, str(maps_file), *args],
                                capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WrpnError(f"the counting run of {what} under qemu took over {timeout:.0f} s") from None
    if result.returncode != 0 or not maps_file.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise WrpnError(f"the counting run of {what} under qemu failed: {tail}")
    counted = []
    for line in counts_file.read_text().splitlines():
        first, last, count = line.split()
        counted.append((int(first, 16), int(last, 16), int(count)))
    return maps_file.read_text(), counted


def _in_library(maps: str, counted: list, library: Path) -> list:
    """The counted blocks inside the library's mappings, as offsets from its load address."""
    base, end = _mapped_range(maps, library)
    return [(first - base, last - base, count) for first, last, count in counted if base <= first < end]


def _mapped_range(maps: str, library: Path) -> tuple:
    """(load address, end of its last mapping) of the library in a /proc/self/maps text."""
    base, end = None, None
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(library):
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if int(fields[2], 16) == 0 and base is None:
                base = low
            end = high if end is None else max(end, high)
    if base is None:
        raise WrpnError(f"the counting run did not show where {library.name} was loaded")
    return base, end
