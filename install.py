"""Install cfgsim's dependencies into the WebUI's environment: only what is missing, nothing upgraded.

The WebUI runs this file (in a subprocess, with the WebUI root on PYTHONPATH) when it starts and
finds the extension. The rules, in order:

1. ``--skip-install`` among the WebUI's command-line arguments: do nothing.
2. The dependency list is the one in ``pyproject.toml`` (``[project] dependencies``); there is no
   second list to drift from it. It is read with ``tomllib`` (Python 3.11+), ``tomli`` if present,
   else a small parser for that one array (the WebUI's Python is 3.10 and may lack tomli).
3. A requirement already satisfied is left alone. torch is never installed (the WebUI owns the
   torch build), and packages the WebUI pins (Pillow, numpy, scikit-image, open-clip-torch,
   gradio...) are never upgraded: present in any version, they stay as they are (Pillow 10 breaks
   the WebUI's own grid drawing).
4. Nothing else already installed changes, dependencies of dependencies included: pip runs with a
   constraints file that pins every other distribution installed now to its version (``-c``), so a
   requirement whose newest release wants numpy 2 or Pillow 11 resolves to an older release that
   fits the WebUI's pins, or fails with pip's message — it never upgrades them. Afterwards the
   installed versions are compared with those before, and any change is reported.
5. Installation goes through the WebUI's ``launch.run_pip`` when importable (it uses the WebUI's
   pip, index and proxy settings), else ``python -m pip install``.

Running it twice installs nothing the second time. No ``packaging`` import: it may be missing.

Note on ``--skip-install``: the WebUI itself runs no extension installer with that flag; the check
here covers the other ways this file gets run (the Extensions tab, by hand).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
PYPROJECT = os.path.join(HERE, "pyproject.toml")

# Never installed by this script, whatever the dependency list says: the WebUI owns these.
NEVER_INSTALL = frozenset({"torch", "torchvision", "xformers"})
# Installed if absent, never upgraded if present in any version (the WebUIs pin them).
NEVER_UPGRADE = frozenset(
    {"pillow", "numpy", "scikit-image", "open-clip-torch", "gradio", "scipy", "transformers", "safetensors"}
)

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(?:;\s*(.*))?$")
_SPECIFIER = re.compile(r"^\s*(===|==|!=|~=|<=|>=|<|>)\s*([^\s,]+)\s*$")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-`` (``Pillow`` → ``pillow``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- reading pyproject.toml ----------------------------------------------------------------------------


def read_dependencies(path: str = PYPROJECT) -> list[str]:
    """``[project] dependencies`` of ``path``."""
    with open(path, "rb") as file:
        text = file.read().decode("utf-8")
    toml = _toml_module()
    if toml is not None:
        data = toml.loads(text)
        return [str(item) for item in data.get("project", {}).get("dependencies", [])]
    return parse_dependencies(text)


def _toml_module():
    try:
        import tomllib

        return tomllib
    except ImportError:
        pass
    try:
        import tomli

        return tomli
    except ImportError:
        return None


def parse_dependencies(text: str) -> list[str]:
    """The ``dependencies`` array of the ``[project]`` table, without a TOML library.

    Enough TOML for that array: tables, comments, basic and literal strings, an array that spans
    lines. Anything else in the file is skipped.
    """
    table = ""
    lines = iter(text.splitlines())
    for line in lines:
        stripped = _strip_comment(line).strip()
        header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]", stripped)
        if header:
            table = header.group(1)
            continue
        if table != "project":
            continue
        match = re.match(r"dependencies\s*=\s*(.*)$", stripped)
        if not match:
            continue
        value = match.group(1)
        # Gather lines until the array's closing bracket (outside strings).
        while not _array_closed(value):
            try:
                value += "\n" + _strip_comment(next(lines))
            except StopIteration:
                raise ValueError("pyproject.toml: the dependencies array is not closed") from None
        return _strings(value)
    return []


def _strip_comment(line: str) -> str:
    out, quote = [], ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _array_closed(value: str) -> bool:
    depth, quote = 0, ""
    for ch in value:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return True
    return False


def _strings(value: str) -> list[str]:
    found = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'', value)
    return [basic.encode("utf-8").decode("unicode_escape") if basic else literal for basic, literal in found]


# -- requirements and versions -------------------------------------------------------------------------


def parse_requirement(text: str) -> tuple[str, list[tuple[str, str]], str]:
    """``"numpy>=1.23,<3; python_version>='3.10'"`` → ("numpy", [(">=", "1.23"), ("<", "3")], marker)."""
    match = _REQUIREMENT.match(text)
    if not match:
        raise ValueError(f"requirement {text!r} is not understood")
    name, _extras, specifiers, marker = match.groups()
    specs = []
    for part in (specifiers or "").strip("() ").split(","):
        if not part.strip():
            continue
        spec = _SPECIFIER.match(part)
        if not spec:
            raise ValueError(f"requirement {text!r}: version {part.strip()!r} is not understood")
        specs.append((spec.group(1), spec.group(2)))
    return name, specs, (marker or "").strip()


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version (``"2.20.0"`` → (2, 20, 0); ``"1.26.2rc1"`` → (1, 26, 2)).

    Pre-release, post-release and local parts are ignored: close enough to decide "installed or
    not", which is all this script decides.
    """
    release = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not release:
        return ()
    numbers = [int(n) for n in release.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def satisfies(installed: str, specs: Iterable[tuple[str, str]]) -> bool:
    have = version_tuple(installed)
    for op, wanted in specs:
        want = version_tuple(wanted.rstrip(".*"))
        if op in ("==", "==="):
            ok = have[: len(want)] == want if wanted.endswith(".*") else have == want
        elif op == "!=":
            ok = have != want
        elif op == ">=":
            ok = have >= want
        elif op == "<=":
            ok = have <= want
        elif op == ">":
            ok = have > want
        elif op == "<":
            ok = have < want
        else:  # "~=": at least this, same series
            ok = have >= want and have[: max(len(want) - 1, 1)] == want[: max(len(want) - 1, 1)]
        if not ok:
            return False
    return True


def marker_applies(marker: str) -> bool:
    """Evaluate the simple markers a dependency list uses (python_version, sys_platform, os_name);
    an unknown marker applies (installing one package too many beats a missing one)."""
    if not marker:
        return True
    env = {
        "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "sys_platform": sys.platform,
        "os_name": os.name,
        "platform_system": {"win32": "Windows", "darwin": "Darwin"}.get(sys.platform, "Linux"),
    }
    for clause in re.split(r"\s+and\s+", marker):
        match = re.fullmatch(r"\s*(\w+)\s*(==|!=|>=|<=|<|>)\s*['\"]([^'\"]*)['\"]\s*", clause)
        if not match or match.group(1) not in env:
            continue
        key, op, value = match.groups()
        have = env[key]
        if key == "python_version":
            ok = satisfies(have, [(op, value)])
        else:
            ok = (have == value) if op == "==" else (have != value) if op == "!=" else True
        if not ok:
            return False
    return True


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- deciding and installing ---------------------------------------------------------------------------


def plan(
    requirements: Sequence[str], version_of: Callable[[str], str | None] = installed_version
) -> tuple[list[str], list[str]]:
    """(requirements to install, notes) — see the module docstring for the rules."""
    to_install, notes = [], []
    for text in requirements:
        name, specs, marker = parse_requirement(text)
        key = normalise(name)
        if not marker_applies(marker):
            continue
        if key in NEVER_INSTALL:
            notes.append(f"{name}: left to the WebUI (never installed by cfgsim)")
            continue
        have = version_of(name)
        if have is not None and satisfies(have, specs):
            continue
        if have is not None and key in NEVER_UPGRADE:
            notes.append(f"{name} {have} is older than cfgsim asks ({text}); kept: the WebUI pins it")
        else:
            to_install.append(text.split(";")[0].strip())
    return to_install, notes


def installed_distributions() -> dict[str, str]:
    """{normalised name: version} of every distribution installed in this Python."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and dist.version:
            out.setdefault(normalise(name), dist.version)
    return out


def constraints_text(installed: Mapping[str, str]) -> str:
    """A pip constraints file pinning every installed distribution to its installed version."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(installed.items()))


@contextlib.contextmanager
def constraints_file(installed: Mapping[str, str]) -> Iterator[str]:
    """The constraints of :func:`constraints_text` in a temporary file, removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="cfgsim-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(constraints_text(installed))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def pip_install(requirement: str, constraints: str) -> None:
    """One requirement under the constraints file, through the WebUI's pip runner when there is one."""
    try:
        import launch
    except ImportError:
        launch = None
    run_pip = getattr(launch, "run_pip", None)
    if callable(run_pip):
        run_pip(f'install "{requirement}" -c "{constraints}"', f"cfgsim requirement: {requirement}")
    else:
        subprocess.run([sys.executable, "-m", "pip", "install", requirement, "-c", constraints], check=True)


def changed_versions(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """``"numpy 1.26.2 -> 2.1.0"`` for every distribution installed before whose version changed."""
    return [
        f"{name} {version} -> {after.get(name, 'removed')}"
        for name, version in sorted(before.items())
        if after.get(name) != version
    ]


def skip_requested(argv: Sequence[str]) -> bool:
    """``--skip-install`` given to the WebUI. The WebUI runs this file in a subprocess with its own
    argv, so the flag is also looked for where the WebUI's arguments live: ``COMMANDLINE_ARGS``
    (webui-user.sh / .bat) and the WebUI's parsed arguments (``launch.args``) when importable."""
    if "--skip-install" in argv or "--skip-install" in os.environ.get("COMMANDLINE_ARGS", "").split():
        return True
    launch = sys.modules.get("launch")
    return bool(getattr(getattr(launch, "args", None), "skip_install", False))


def main(argv: Sequence[str] | None = None, path: str = PYPROJECT) -> list[str]:
    """Install what is missing; returns the requirements it installed."""
    argv = sys.argv if argv is None else argv
    if skip_requested(argv):
        return []
    to_install, notes = plan(read_dependencies(path), installed_version)
    for note in notes:
        print(f"cfgsim: {note}")
    if not to_install:
        return []
    before = installed_distributions()
    for requirement in to_install:
        # The requirement itself may be upgraded (it is too old or absent); nothing else may move.
        name = normalise(parse_requirement(requirement)[0])
        with constraints_file({k: v for k, v in before.items() if k != name}) as constraints:
            pip_install(requirement, constraints)
    for change in changed_versions(before, installed_distributions()):
        print(f"cfgsim: warning: installing {', '.join(to_install)} changed {change}")
    return to_install


if __name__ == "__main__":  # the WebUI runs this file as a script, in a subprocess
    main()
