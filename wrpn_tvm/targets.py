"""Named target presets: what `--target` accepts, and which CPUs can run code built for a target.

A preset is a TVM target JSON dict plus what building for it needs (a cross compiler for the
ARM boards). Anything that is not a preset name is parsed as a raw TVM target JSON object.
TVM is imported on first use, so that the command line's --help does not wait for it.
"""

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from .errors import WrpnError, one_line

if TYPE_CHECKING:  # annotations only: TVM itself is imported on first use
    import tvm

AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_CC = "aarch64-linux-gnu-gcc"
CUDA_ARCHS = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target, and the C compiler that links its shared library."""

    name: str
    target: "tvm.target.Target"
    cross_compiler: str | None  # None: the host's own compiler

    @property
    def is_remote_arch(self) -> bool:
        """True when the code cannot run on this machine's CPU (it must go to a device)."""
        return self.cross_compiler is not None

    @property
    def is_cuda(self) -> bool:
        return self.target.kind.name == "cuda"

    @property
    def is_aarch64(self) -> bool:
        return is_aarch64(self.target)


def is_aarch64(target: "tvm.target.Target") -> bool:
    """Whether a TVM target generates 64-bit ARM code (the Raspberry Pi presets)."""
    return "aarch64" in str(target.attrs.get("mtriple", ""))


def _arm(mcpu: str, mattr: list[str]) -> dict:
    return {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mcpu": mcpu, "mattr": mattr, "num-cores": 4}


def _x86(mcpu: str, mattr: "list[str] | None" = None) -> dict:
    # MetaSchedule's CPU rules need num-cores; x86 presets are compiled and tuned on this host.
    config = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": os.cpu_count() or 1}
    if mattr:
        config["mattr"] = mattr
    return config


# The ISA-level presets name an instruction set, not a CPU, so that code and tuning logs made for
# them run on every CPU that has it: x86-avx512 on Intel Ice Lake and later servers and AMD Zen 4
# and 5; x86-avx2 on any AVX2 CPU; x86-avx2-vnni on AVX2 CPUs with AVX-VNNI (the VEX-encoded
# vpdpbusd of Intel Alder Lake and later client CPUs, which have no AVX-512, Sapphire Rapids and
# later servers, AMD Zen 5). x86-64-v4 alone would prefer 256-bit vectors and split our 512-bit
# popcount loops.
AVX512_MATTR = ["+avx512vpopcntdq", "+avx512vnni", "+avx512bitalg", "-prefer-256-bit"]


# AMX tiles (Intel Sapphire Rapids and later). A virtual machine's CPU model can make LLVM name an
# older core for the host (a Sapphire/Emerald Rapids VM here reads as rocketlake, which has no AMX),
# so the host preset adds them where the OS reports them.
AMX_MATTR = ["+amx-tile", "+amx-int8"]


@lru_cache(maxsize=1)
def host_cpu_flags() -> frozenset:
    """The CPU flags Linux reports for this machine (/proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_mattr() -> "list[str] | None":
    """Features the host preset adds to LLVM's name for this CPU."""
    return AMX_MATTR if {"amx_tile", "amx_int8"} <= host_cpu_flags() else None


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """This machine's CPU as LLVM names it (e.g. znver4): the `host` preset compiles for it."""
    import tvm

    return tvm.target.codegen.llvm_get_system_cpu()


def _presets() -> dict[str, tuple[dict, str | None]]:
    return {
        "host": (_x86(host_cpu(), host_mattr()), None),
        "x86-avx2": (_x86("x86-64-v3"), None),
        "x86-avx2-vnni": (_x86("x86-64-v3", ["+avxvnni"]), None),
        "x86-avx512": (_x86("x86-64-v4", AVX512_MATTR), None),
        "rasp3b": (_arm("cortex-a53", ["+neon"]), AARCH64_CC),
        "rasp4": (_arm("cortex-a72", ["+neon"]), AARCH64_CC),
        "rasp5": (_arm("cortex-a76", ["+neon", "+dotprod"]), AARCH64_CC),
        "aarch64": (_arm("generic", ["+neon"]), AARCH64_CC),
        # MetaSchedule's GPU rules need the per-block limits spelled out (48 KiB: no opt-in shared memory).
        "cuda": ({"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024,
                  "max_shared_memory_per_block": 49152, "thread_warp_size": 32}, None),
    }


PRESET_NAMES = ("host", "x86-avx2", "x86-avx2-vnni", "x86-avx512", "rasp3b", "rasp4", "rasp5", "aarch64", "cuda")


def resolve(name_or_json: "str | dict | tvm.target.Target | TargetSpec", cuda_arch: str | None = None) -> TargetSpec:
    """Turn a preset name, a `cuda:sm_90`-style name, a target JSON string/dict or a Target into a TargetSpec."""
    from tvm.target import Target

    if isinstance(name_or_json, TargetSpec):
        return name_or_json
    if isinstance(name_or_json, Target):
        return _spec_from_dict("custom", dict(name_or_json.export()))
    if isinstance(name_or_json, dict):
        return _spec_from_dict("custom", name_or_json)
    text = str(name_or_json).strip()
    if text.startswith("cuda:"):
        text, cuda_arch = "cuda", text.split(":", 1)[1]
    presets = _presets()
    if text in presets:
        config, cross = presets[text]
        config = dict(config)
        if cuda_arch is not None:
            if text != "cuda":
                raise WrpnError(f"--cuda-arch applies only to the cuda target, not {text!r}")
            if cuda_arch not in CUDA_ARCHS:
                raise WrpnError(f"unknown CUDA arch {cuda_arch!r}; choose one of {', '.join(CUDA_ARCHS)}")
            config["arch"] = cuda_arch
        return TargetSpec(text, Target(config), cross)
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise WrpnError(f"target JSON does not parse: {err}") from None
        return _spec_from_dict("custom", config)
    raise WrpnError(f"unknown target {text!r}; use one of {', '.join(PRESET_NAMES)} or a TVM target JSON object")


def _spec_from_dict(name: str, config: dict) -> TargetSpec:
    from tvm.target import Target

    try:
        target = Target(config)
    except Exception as err:  # TVM raises several error types for a malformed config
        raise WrpnError(f"invalid TVM target {json.dumps(config)}: {one_line(err, last=True)}") from None
    triple = str(target.attrs.get("mtriple", "")) if target.kind.name == "llvm" else ""
    cross = AARCH64_CC if triple.startswith("aarch64") else None
    return TargetSpec(name, target, cross)


# LLVM lists tuning flags (scheduling preferences, fusion hints, a core's own family name) beside
# its instruction-set features; they change how fast code is, never whether it runs.
_TUNING_FEATURE = re.compile(
    r"^(tuning-|fast-|slow-|false-deps-|no-bypass-delay|prefer-|fuse-|use-|avoid-|balance-|predictable-|"
    r"addr-lsl-|lea-|idiv[lq]-to-div|pad-short-|sbb-dep-|harden-)"
    r"|^(macrofusion|branchfusion|allow-light-256-bit|vzeroupper|ermsb|enable-select-opt|"
    r"ete|trbe|perfmon|el2vmsa|el3|a\d\d)$"
)


def isa_features(target: "tvm.target.Target") -> frozenset:
    """The instruction-set features LLVM enables for an llvm target's triple, CPU and attributes."""
    import tvm

    return frozenset(f for f in tvm.target.codegen.llvm_get_cpu_features(target) if not _TUNING_FEATURE.match(f))


def cpu_label(target: "tvm.target.Target") -> str:
    """A target's CPU for messages: its mcpu, and its attributes where it names any."""
    mattr = [str(a) for a in target.attrs.get("mattr", [])] if target.kind.name == "llvm" else []
    name = str(target.attrs.get("mcpu", "generic")) if target.kind.name == "llvm" else str(target.attrs.get("arch", ""))
    return name + (f" ({','.join(mattr)})" if mattr else "")


def missing_features(built_for: "tvm.target.Target", runs_on: "tvm.target.Target") -> "frozenset | None":
    """The instruction-set features that code built for `built_for` may use and `runs_on` lacks;
    None when the two cannot share code at all (another target kind, triple or CUDA arch)."""
    if built_for.kind.name != runs_on.kind.name:
        return None
    if built_for.kind.name != "llvm":
        same = str(built_for.attrs.get("arch", "")) == str(runs_on.attrs.get("arch", ""))
        return frozenset() if same else None
    if str(built_for.attrs.get("mtriple", "")) != str(runs_on.attrs.get("mtriple", "")):
        return None
    return isa_features(built_for) - isa_features(runs_on)
