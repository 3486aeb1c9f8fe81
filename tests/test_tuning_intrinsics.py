"""TVM's tensor intrinsics imported with the shallow frame stack (tuning/intrinsics.py): the same
frames as inspect.stack(), source lines for the innermost ones only, and every intrinsic the
package names registered."""

import inspect
import subprocess
import sys

from wrpn_tvm.tuning.intrinsics import SOURCE_FRAMES, shallow_stack


def _nested(depth, stack):
    return stack() if depth == 0 else _nested(depth - 1, stack)


def test_shallow_stack_gives_inspects_frames_with_source_lines_for_the_innermost_only():
    full, shallow = _nested(6, inspect.stack), _nested(6, shallow_stack)  # one line: the same call sites
    assert len(shallow) == len(full) > SOURCE_FRAMES + 6
    for i, (a, b) in enumerate(zip(shallow, full)):
        assert (a.frame.f_code, a.filename, a.lineno, a.function) == (b.frame.f_code, b.filename, b.lineno, b.function)
        if i < SOURCE_FRAMES:
            assert (a.code_context, a.index) == (b.code_context, b.index)
        else:
            assert a.code_context is None and a.index is None


def test_frames_without_a_source_file_get_what_inspect_gives_them(monkeypatch):
    """Innermost frames run from "<...>" code: no source lines, as inspect finds none; one whose
    text linecache holds (an interactive cell) keeps its line."""
    import linecache

    cell = "result = stack()\n"
    monkeypatch.setitem(linecache.cache, "<cell-1>", (len(cell), None, [cell], "<cell-1>"))
    for filename in ("<ast>", "<cell-1>"):
        code = compile(cell, filename, "exec")
        results = []
        for stack in (shallow_stack, inspect.stack):
            scope = {"stack": stack}
            exec(code, scope)
            results.append(scope["result"][0])
        shallow, full = results
        assert (shallow.filename, shallow.lineno, shallow.code_context) == (full.filename, full.lineno, full.code_context)
        assert (full.code_context is None) == (filename == "<ast>")


CHECK = """
import inspect, pkgutil, sys
from wrpn_tvm.tuning.intrinsics import import_tensor_intrinsics
stack = inspect.stack
import_tensor_intrinsics()
assert inspect.stack is stack, "inspect.stack not restored"
from tvm.s_tir import TensorIntrin
import tvm.s_tir.tensor_intrin as package
names = {value for info in pkgutil.iter_modules(package.__path__)
         for key, value in vars(sys.modules.get(f"{package.__name__}.{info.name}", package)).items()
         if "INTRIN" in key and isinstance(value, str)}
missing = []
for name in sorted(names):
    try:
        TensorIntrin.get(name)
    except Exception:
        missing.append(name)
print(len(names), len(missing), missing[:5])
"""


def test_every_intrinsic_the_package_names_is_registered_after_the_fast_import():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    named, missing, _ = out.stdout.split(maxsplit=2)
    assert int(named) > 100 and int(missing) == 0, out.stdout
