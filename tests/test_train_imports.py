"""train/ has no import loop: its modules' imports of each other (any level, lazy ones too) form a DAG."""

import ast
import subprocess
import sys
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "dve_kernels" / "train"
MODULES = sorted(p.stem for p in TRAIN.glob("*.py"))


def _train_imports(module: str) -> set:
    """The train modules that ``module`` imports (``from .x import``, ``from . import x``, absolute forms)."""
    found = set()
    for node in ast.walk(ast.parse((TRAIN / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1:
                found |= {name.split(".")[0]} if name else {alias.name for alias in node.names}
            elif name.startswith("dve_kernels.train."):
                found.add(name.split(".")[2])
    return found & set(MODULES) - {module}


def test_train_modules_import_each_other_without_a_loop():
    graph = {m: _train_imports(m) for m in MODULES}
    assert graph["loop"] >= {"evaluate", "checkpoint"} and graph["evaluate"] >= {"figures"}  # the parser sees them
    done, path = set(), []

    def visit(module):
        assert module not in path, f"import loop: {' -> '.join(path[path.index(module):] + [module])}"
        if module not in done:
            path.append(module)
            for other in sorted(graph[module]):
                visit(other)
            path.pop()
            done.add(module)

    for module in MODULES:
        visit(module)


def test_every_train_module_imports_first():
    # One interpreter; before each module, every train module is forgotten, so each is imported first, alone.
    script = ("import importlib, sys\nimport dve_kernels\n"
              f"for name in {[m for m in MODULES if m != '__main__']!r}:\n"
              "    for key in [k for k in sys.modules if k.startswith('dve_kernels.train')]:\n"
              "        del sys.modules[key]\n"
              "    importlib.import_module('dve_kernels.train.' + name)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=TRAIN.parents[1],
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
