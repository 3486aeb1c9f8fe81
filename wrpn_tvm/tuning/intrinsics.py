"""TVM's tensor intrinsics, imported before a job's first TuneContext, in seconds rather than minutes.

MetaSchedule's TuneContext imports `tvm.s_tir.tensor_intrin` on first use: 112 intrinsics written in
TVMScript, each parsed under `@T.prim_func`, which calls `inspect.stack()` to capture its caller's
scope. `inspect.stack()` reads source lines for every frame on the stack, and for frames with no
file on disk (importlib's frozen frames, the ASTs TVMScript evaluates) scans every loaded module:
the import took 34 s in a bare interpreter and 112 s inside a tuning job (58% of a 16-trial resumed
job on ResNet-18, by py-spy). The parser reads the frames themselves and, to tell a function inside
an `@I.ir_module` class, the source line of the innermost three; so the import runs here with an
`inspect.stack` that reads source lines for those only: 3.4 s, the same 112 intrinsics (their
structural hashes compared with a plain import's).
"""

import contextlib
import inspect
import sys

SOURCE_FRAMES = 3  # innermost frames whose source lines TVMScript's parser reads (is_defined_in_class)


def shallow_stack(context: int = 1) -> list:
    """inspect.stack() of the caller, with source lines for the innermost SOURCE_FRAMES frames only."""
    frame, infos = sys._getframe(1), []
    while frame is not None:
        if len(infos) < SOURCE_FRAMES:
            infos.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
        else:
            code = frame.f_code
            infos.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
        frame = frame.f_back
    return infos


@contextlib.contextmanager
def _shallow_inspect_stack():
    full = inspect.stack
    inspect.stack = shallow_stack
    try:
        yield
    finally:
        inspect.stack = full


def import_tensor_intrinsics() -> None:
    """Import (and so register) TVM's tensor intrinsics, as TuneContext would, quickly."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with _shallow_inspect_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the intrinsics)
