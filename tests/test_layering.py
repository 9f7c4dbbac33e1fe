"""The dependency arrows of STYLE.md: ``core`` and ``tasks`` are leaves that load no CLI,
terminal or config library, and ``core`` imports nothing from the rest of the package."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "bptt_cli" / "core"
TASKS = ROOT / "bptt_cli" / "tasks"
FORBIDDEN = ("typer", "rich", "yaml", "pydantic", "click")
CORE_MODULES = ("model", "truncation", "bptt", "losses", "clipping", "optim", "errors")


def _modules_under(pkg_dir: Path, dotted: str) -> list[str]:
    return sorted(
        f"{dotted}.{p.stem}" if p.stem != "__init__" else dotted
        for p in pkg_dir.glob("*.py")
    )


def test_core_and_tasks_load_no_cli_libraries():
    wanted = ["bptt_cli.core"] + [f"bptt_cli.core.{m}" for m in CORE_MODULES] + ["bptt_cli.tasks"]
    # Whatever else lives there (diagnostics, one module per task) must obey the same rule.
    wanted += _modules_under(CORE, "bptt_cli.core") + _modules_under(TASKS, "bptt_cli.tasks")
    wanted = list(dict.fromkeys(wanted))
    code = (
        "import importlib, json, sys\n"
        f"for name in {wanted!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(json.dumps(bad))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the core/tasks loaded {loaded}"


def _imports(path: Path, package: str):
    """Yield (lineno, absolute module name) for every import in a module of ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from bptt_cli import core` names a module too: check each imported name.
            if mod in ("bptt_cli",):
                for alias in node.names:
                    yield node.lineno, f"{mod}.{alias.name}"
            else:
                yield node.lineno, mod


def _core_files():
    files = sorted(CORE.rglob("*.py"))
    assert files, "bptt_cli/core has no modules"
    return files


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_only_core_numpy_and_stdlib(path):
    rel = path.relative_to(ROOT).with_suffix("")
    package = ".".join(rel.parts[:-1])  # the package a relative import is resolved against
    bad = []
    for lineno, mod in _imports(path, package):
        top = mod.split(".")[0]
        if top == "bptt_cli":
            if not (mod == "bptt_cli.core" or mod.startswith("bptt_cli.core.")):
                bad.append(f"line {lineno}: imports {mod} (core must not import the rest of bptt_cli)")
        elif top != "numpy" and top not in sys.stdlib_module_names and top != "__future__":
            bad.append(f"line {lineno}: imports {mod} (core is pure NumPy + stdlib)")
    assert not bad, f"{path.relative_to(ROOT)}:\n" + "\n".join(bad)
