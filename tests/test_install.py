"""install.py: one dependency list, only what is missing, never torch, never an upgrade of a WebUI pin."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def install(monkeypatch):
    """install.py loaded as a module, with a fake ``launch`` whose run_pip records its commands
    (and the constraints file each command names, read while it exists)."""
    launch = types.ModuleType("launch")
    launch.commands = []
    launch.constraints = []

    def run_pip(command, desc=None, live=False):
        match = re.search(r' -c "([^"]+)"$', command)
        launch.constraints.append(Path(match.group(1)).read_text() if match else None)
        launch.commands.append((re.sub(r' -c "[^"]+"$', "", command), desc))

    launch.run_pip = run_pip
    launch.args = types.SimpleNamespace(skip_install=False)
    monkeypatch.setitem(sys.modules, "launch", launch)
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)
    spec = importlib.util.spec_from_file_location("cfgsim_install_under_test", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.launch = launch
    return module


def pyproject(tmp_path, deps: str) -> str:
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "x"\n'
        f'dependencies = [{deps}]\n\n[project.optional-dependencies]\nclip = ["torch"]\n'
    )
    return str(path)


def test_the_dependency_list_is_pyprojects(install):
    text = (ROOT / "pyproject.toml").read_text()
    expected = install.parse_dependencies(text)  # the fallback (Python 3.10 without tomli)
    assert expected and all(isinstance(item, str) for item in expected)
    assert install.read_dependencies() == expected
    if sys.version_info >= (3, 11):
        import tomllib

        assert tomllib.loads(text)["project"]["dependencies"] == expected


def test_fallback_parser_handles_comments_quotes_and_lines():
    text = """
[project]
name = "x"  # a comment
dependencies = [
    "numpy>=1.23",  # the WebUI pins 1.26.2
    'Pillow>=9.5',
    "tqdm[notebook]>=4.60; python_version >= '3.8'",  # ] in a comment
]
[tool.other]
dependencies = ["not-this"]
"""
    spec = importlib.util.spec_from_file_location("install_parser", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_dependencies(text) == [
        "numpy>=1.23",
        "Pillow>=9.5",
        "tqdm[notebook]>=4.60; python_version >= '3.8'",
    ]


def test_installs_only_what_is_missing_and_is_idempotent(install, tmp_path):
    path = pyproject(tmp_path, '"numpy>=1.23", "tqdm>=4.60", "cfgsim-missing-package>=1.0"')
    installed = {"numpy": "1.26.2", "tqdm": "4.66.1"}
    install.installed_version = installed.get
    assert install.main([], path=path) == ["cfgsim-missing-package>=1.0"]
    assert install.launch.commands == [
        ('install "cfgsim-missing-package>=1.0"', "cfgsim requirement: cfgsim-missing-package>=1.0")
    ]
    assert install.launch.constraints[0]  # every installed distribution pinned
    installed["cfgsim-missing-package"] = "1.2"
    assert install.main([], path=path) == []  # the second run installs nothing
    assert len(install.launch.commands) == 1


def test_never_torch_and_never_an_upgrade_of_webui_pins(install, tmp_path, capsys):
    path = pyproject(
        tmp_path,
        '"torch>=2.0", "Pillow>=10", "numpy>=2", "scikit-image>=0.22", "open-clip-torch>=2.24", '
        '"gradio>=4", "tqdm>=99"',
    )
    installed = {
        "Pillow": "9.5.0",
        "numpy": "1.26.2",
        "scikit-image": "0.21.0",
        "open-clip-torch": "2.20.0",
        "gradio": "3.41.2",
        "tqdm": "4.66.1",
    }
    install.installed_version = installed.get
    # torch absent and asked for: still not installed. Pins too old for the list: kept. tqdm: upgraded.
    assert install.main([], path=path) == ["tqdm>=99"]
    out = capsys.readouterr().out
    assert "torch: left to the WebUI" in out
    assert "Pillow 9.5.0 is older" in out and "kept" in out


def test_absent_pinned_packages_are_installed(install, tmp_path):
    path = pyproject(tmp_path, '"scikit-image>=0.20"')
    install.installed_version = lambda name: None
    assert install.main([], path=path) == ["scikit-image>=0.20"]


@pytest.mark.parametrize("where", ["argv", "env", "launch"])
def test_skip_install(install, tmp_path, monkeypatch, where):
    path = pyproject(tmp_path, '"cfgsim-missing-package"')
    install.installed_version = lambda name: None
    argv = ["install.py"]
    if where == "argv":
        argv.append("--skip-install")
    elif where == "env":
        monkeypatch.setenv("COMMANDLINE_ARGS", "--xformers --skip-install")
    else:
        install.launch.args.skip_install = True
    assert install.main(argv, path=path) == []
    assert install.launch.commands == []


def test_without_launch_pip_runs_in_this_python(install, tmp_path, monkeypatch):
    monkeypatch.setattr(install, "skip_requested", lambda argv: False)
    calls = []
    monkeypatch.setattr(install.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setitem(sys.modules, "launch", None)  # "import launch" raises ImportError
    install.installed_version = lambda name: None
    install.main([], path=pyproject(tmp_path, '"cfgsim-missing-package"'))
    ((command,),) = [calls]
    assert command[:5] == [sys.executable, "-m", "pip", "install", "cfgsim-missing-package"]
    assert command[5] == "-c" and not os.path.exists(command[6])  # removed afterwards


def test_pip_runs_with_everything_installed_pinned(install, tmp_path, monkeypatch):
    """pip resolves scikit-image>=0.20 to numpy 2 and Pillow 11+ unless told not to: every other
    installed distribution is pinned to its version through a constraints file."""
    path = pyproject(tmp_path, '"scikit-image>=0.20", "tqdm>=99"')
    installed = {"numpy": "1.26.2", "pillow": "9.5.0", "tqdm": "4.66.1"}
    monkeypatch.setattr(install, "installed_distributions", lambda: dict(installed))
    install.installed_version = lambda name: installed.get(install.normalise(name))
    assert install.main([], path=path) == ["scikit-image>=0.20", "tqdm>=99"]
    skimage_pins, tqdm_pins = install.launch.constraints
    assert skimage_pins == "numpy==1.26.2\npillow==9.5.0\ntqdm==4.66.1\n"
    assert tqdm_pins == "numpy==1.26.2\npillow==9.5.0\n"  # the requirement itself may move


def test_a_changed_version_is_reported(install, tmp_path, monkeypatch, capsys):
    states = iter([{"numpy": "1.26.2"}, {"numpy": "2.1.0", "scikit-image": "0.24.0"}])
    monkeypatch.setattr(install, "installed_distributions", lambda: next(states))
    install.installed_version = lambda name: None if name == "scikit-image" else "1.26.2"
    install.main([], path=pyproject(tmp_path, '"scikit-image>=0.20"'))
    assert "changed numpy 1.26.2 -> 2.1.0" in capsys.readouterr().out


VENV_PINS = ("numpy==1.26.2", "Pillow==9.5.0")


@pytest.mark.skipif(
    os.environ.get("CFGSIM_PYPI_TESTS") != "1",
    reason="asks PyPI (set CFGSIM_PYPI_TESTS=1): builds a venv with numpy 1.26.2 and Pillow 9.5.0",
)
def test_real_pip_plan_keeps_the_webui_pins(tmp_path):
    """The issue's reproduction: in a venv holding only numpy 1.26.2 and Pillow 9.5.0, pip's own
    resolver (``--dry-run --report``) under install.py's plan and constraints installs neither."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--only-binary=:all:", *VENV_PINS], check=True, timeout=600)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import install; "
        "todo, _ = install.plan(install.read_dependencies()); "
        "print(json.dumps([todo, install.installed_distributions()]))"
    )
    done = subprocess.run([python, "-c", code, str(ROOT)], check=True, capture_output=True, text=True)
    to_install, installed = json.loads(done.stdout)
    assert installed["numpy"] == "1.26.2" and installed["pillow"] == "9.5.0"
    assert to_install and not any(r.lower().startswith(("numpy", "pillow")) for r in to_install)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{k}=={v}\n" for k, v in installed.items()))
    report = tmp_path / "report.json"
    dry_run = ["install", "--dry-run", "--only-binary=:all:", "--report", str(report), "-c", str(constraints)]
    subprocess.run(
        [*pip, *dry_run, *to_install],
        check=True,
        timeout=600,
    )
    planned = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "numpy" not in planned and "pillow" not in planned, planned


@pytest.mark.parametrize(
    ("installed", "specs", "ok"),
    [
        ("1.26.2", [(">=", "1.23")], True),
        ("1.22.4", [(">=", "1.23")], False),
        ("2.20.0", [("==", "2.20")], True),
        ("2.20.1", [("==", "2.20.*")], True),
        ("2.21.0", [("==", "2.20.*")], False),
        ("9.5.0", [(">=", "9.5"), ("<", "11")], True),
        ("1.4.2", [("~=", "1.4")], True),
        ("2.0", [("~=", "1.4")], False),
        ("1.26.2rc1", [(">=", "1.26.2")], True),
        ("0.21.0", [("!=", "0.21")], False),
    ],
)
def test_version_checks(install, installed, specs, ok):
    assert install.satisfies(installed, specs) is ok


def test_markers(install):
    assert install.marker_applies("")
    assert install.marker_applies("python_version >= '3.8'")
    assert not install.marker_applies("python_version < '3.0'")
    assert install.marker_applies("sys_platform == 'linux'") is (sys.platform == "linux")
    assert install.marker_applies("extra == 'clip'")  # unknown markers apply


def test_runs_as_a_script_with_skip_install():
    """The WebUI runs install.py in a subprocess; with --skip-install it must do nothing and exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "install.py"), "--skip-install"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
