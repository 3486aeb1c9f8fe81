"""The shape of the code: imports point down the pipeline only, and the command line answers
--help and argument errors without importing TVM or torch."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("wrpn_tvm", "schedules")
# What loads and runs a compiled library: it must not need the compiler.
RUNTIME = {"wrpn_tvm.runtime", "wrpn_tvm.artifact"}
COMPILER = {"wrpn_tvm.frontend", "wrpn_tvm.lowering", "wrpn_tvm.ops", "wrpn_tvm.pipeline", "wrpn_tvm.build",
            "wrpn_tvm.tuning", "wrpn_tvm.kernels", "schedules", "wrpn_tvm.nn", "wrpn_tvm.train"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _component(module: str) -> "str | None":
    """The unit whose imports must form no cycle: a top-level module of wrpn_tvm, a subpackage of
    it, or the schedules package. The package root (wrpn_tvm/__init__) imports nothing of its own."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    return parts[0] if parts[0] == "schedules" or len(parts) == 1 else ".".join(parts[:2])


def _imports(path: Path) -> set:
    """Absolute names of everything a file imports, at the top or inside functions."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


def _exists(component: str) -> bool:
    path = REPO / component.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _graph() -> dict:
    """component -> the components it imports (names that are attributes, not modules, drop out)."""
    edges = defaultdict(set)
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            source = _component(_module_name(path))
            for name in _imports(path):
                target = _component(name)
                if target and target != source and _exists(target):
                    edges[source].add(target)
    return edges


def _cycle(edges: dict) -> "list | None":
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_ops_is_a_leaf_and_schedules_only_look_down():
    edges = _graph()
    assert edges["wrpn_tvm.ops"] <= {"wrpn_tvm.errors", "wrpn_tvm.bits"}, edges["wrpn_tvm.ops"]
    assert edges["schedules"] <= {"wrpn_tvm.errors", "wrpn_tvm.ops"}, edges["schedules"]


def test_the_runtime_does_not_import_the_compiler():
    edges = _graph()
    for module in RUNTIME:
        assert not edges[module] & COMPILER, (module, edges[module] & COMPILER)


def test_only_the_pipeline_registers_the_schedules():
    importers = {source for source, targets in _graph().items() if "schedules" in targets}
    assert importers == {"wrpn_tvm.pipeline"}, importers


def test_help_and_argument_errors_import_neither_tvm_nor_torch():
    probe = ("import sys\nfrom wrpn_tvm.cli import main\n"
             "for argv in (['--help'], ['compile', '--help'], ['compile'], ['bench', 'x.so', '--repeat', 'many']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('tvm', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:] + done.stderr[-2000:]
