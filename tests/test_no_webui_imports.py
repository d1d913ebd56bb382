"""The cfgsim library never imports the WebUI (``modules``), gradio or ``launch``.

Only ``scripts/cfgsim_probe.py`` touches the WebUI; the adapter it hands the WebUI's modules to,
``cfgsim.webui``, is covered like every other package. Two checks: importing every cfgsim submodule in
a fresh interpreter loads none of them, and no cfgsim source file names them in an import
statement (that also catches imports inside functions, which the first check cannot see).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("modules", "gradio", "launch")

# cfgsim.__main__ runs the command line when imported: left out. A module whose optional
# dependency is missing here (torch in the Python 3.10 test environment) is listed, not a failure.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import cfgsim
names, unavailable = [], []
for info in pkgutil.walk_packages(cfgsim.__path__, "cfgsim."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("cfgsim",) + {forbidden}:
            raise
        unavailable.append(info.name)
        continue
    names.append(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden})
print(json.dumps({{"imported": names, "unavailable": unavailable, "loaded": loaded}}))
"""


def test_importing_every_cfgsim_module_loads_no_webui_module():
    code = IMPORT_ALL.format(forbidden=FORBIDDEN)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "cfgsim.controls" in report["imported"] and "cfgsim.report" in report["imported"]
    webui_modules = {"context", "options", "host", "restore", "run", "settings", "ui"}
    assert {f"cfgsim.webui.{name}" for name in webui_modules} <= set(report["imported"])
    assert report["loaded"] == []


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    roots.add(arg.value.split(".")[0])
    return roots


def test_no_cfgsim_source_names_a_webui_module():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & set(FORBIDDEN))
        for path in sorted((ROOT / "cfgsim").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_script_is_a_thin_shell():
    """scripts/cfgsim_probe.py keeps only what must import the WebUI: the Script and its ui()."""
    lines = (ROOT / "scripts" / "cfgsim_probe.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200


def test_scripts_folder_holds_one_script():
    """The WebUI executes every top-level file in scripts/ and registers every Script in it."""
    files = [p.name for p in (ROOT / "scripts").iterdir() if not p.name.startswith((".", "__pycache__"))]
    assert files == ["cfgsim_probe.py"]


def test_the_webui_adapter_and_checkpoint_helpers_need_neither_torch_nor_the_standalone_runner():
    """The checkpoint utilities both hosts use live outside cfgsim/standalone and import no torch."""
    import subprocess
    import sys

    code = (
        "import sys, cfgsim.checkpoints, cfgsim.webui.host, cfgsim.webui.run; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('cfgsim.standalone')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
