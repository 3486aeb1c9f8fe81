"""Where candidates are built: in this process, into a `.so` (cross-compiled for ARM boards, which
have no compiler of their own to link TVM's default `.tar` artifacts).

MetaSchedule's LocalBuilder starts fresh worker processes for every batch, and each one imports
TVM's tensor intrinsics: on a 2-core machine that took longer than its build timeout, against
0.1 s to build and link a candidate here.
"""

import os
import tempfile

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import PyBuilder

from ..targets import TargetSpec


@derived_object
class InProcessBuilder(PyBuilder):
    """Builds each candidate in this process and links it into a `.so` with the target's compiler."""

    def __init__(self, cross_compiler: str | None):
        self.cross_compiler = cross_compiler

    def build(self, build_inputs):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.meta_schedule.builder import BuilderResult
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc

        from ..pipeline import TIR_PIPELINE

        fcompile = cc.cross_compiler(self.cross_compiler) if self.cross_compiler else None
        results = []
        for build_input in build_inputs:
            try:
                # As MetaSchedule's default_build: weights are given already laid out at run time.
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
                path = os.path.join(tempfile.mkdtemp(prefix="wrpn-tune-"), "candidate.so")
                tvm_build(mod, target=build_input.target, pipeline=TIR_PIPELINE).export_library(path, fcompile=fcompile)
                results.append(BuilderResult(path, None))
            except Exception as err:  # a candidate that fails to build is a recorded failure, not a crash
                results.append(BuilderResult(None, f"build failed: {err}"))
        return results


def make_builder(spec: TargetSpec):
    return InProcessBuilder(spec.cross_compiler)
