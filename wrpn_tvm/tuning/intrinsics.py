"""TVM's tensor intrinsics, imported before a job's first TuneContext, in seconds rather than minutes.

MetaSchedule's TuneContext imports `tvm.s_tir.tensor_intrin` on first use: 112 intrinsics written in
TVMScript, each parsed under `@T.prim_func`, which calls `inspect.stack()` to capture its caller's
scope. `inspect.stack()` reads source lines for every frame on the stack, and for frames with no
file on disk (importlib's frozen frames, the ASTs TVMScript evaluates) scans every loaded module:
the import took 34 s in a bare interpreter and 112 s inside a tuning job (58% of a 16-trial resumed
job on ResNet-18, by py-spy). The parser reads the frames themselves and, to tell a function inside
an `@I.ir_module` class, the source line of the innermost three; so the import runs here with an
`inspect.stack` that reads source lines for those only, and not for frames with no source file
(`<ast>`, `<frozen ...>`: inspect finds none, after scanning every loaded module for one): 2.8 s
with torch and wrpn_tvm loaded (6.0 s when it read the innermost three's whatever their file), the
same 112 intrinsics (their structural hashes compared with a plain import's).
"""

import contextlib
import inspect
import linecache
import sys

SOURCE_FRAMES = 3  # innermost frames whose source lines TVMScript's parser reads (is_defined_in_class)


def has_source(filename: str) -> bool:
    """Whether inspect could find source lines for code from this file name: "<...>" names have
    none unless linecache holds their text (an interactive session's cells)."""
    return not filename.startswith("<") or filename in linecache.cache


def shallow_stack(context: int = 1) -> list:
    """inspect.stack() of the caller, with source lines for the innermost SOURCE_FRAMES frames only."""
    frame, infos = sys._getframe(1), []
    while frame is not None:
        code = frame.f_code
        if len(infos) < SOURCE_FRAMES and has_source(code.co_filename):
            infos.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
        else:
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
