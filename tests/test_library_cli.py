"""The probe library from the outside: ``cfgsim library …``, the probe/demo flags, the WebUI script."""

from __future__ import annotations

import json
import os
import types

import pytest
from PIL import Image
from test_library import SPEC, A, B, C, CountingHost

from cfgsim import controls
from cfgsim.cli import main
from cfgsim.library import ProbeLibrary
from cfgsim.library import webui as library_webui
from cfgsim.probe import run_probe
from tests.helpers import script_args


@pytest.fixture
def filled(tmp_path):
    library = ProbeLibrary(tmp_path / "lib")
    run_probe(CountingHost(), [A, B, C], SPEC, library=library)
    return library


def cli(*argv: str) -> int:
    return main(["-q", *argv])


def test_list_show_export_remove_clear(filled, tmp_path, capsys):
    lib = str(filled.root)
    assert cli("library", "list", "--library", lib) == 0
    out = capsys.readouterr().out
    assert "3 checkpoint(s), 6 image(s)" in out
    assert all(f"  {n} " in out and A.sha256[:10] in out for n in "abc")

    assert cli("library", "show", B.sha256[:8], "--library", lib) == 0
    out = capsys.readouterr().out
    assert B.sha256 in out and "seeds 1, 2" in out and '"sampler": "Euler"' in out and '"RNG": "CPU"' in out

    export = tmp_path / "export"
    assert cli("library", "export", str(export), "--library", lib) == 0
    manifest = json.loads((export / "manifest.json").read_text())
    assert len(manifest["images"]) == 6
    first = manifest["images"][0]
    with Image.open(export / first["file"]) as image:
        assert image.text["parameters"] == first["infotext"] and first["infotext"].startswith("Seed: ")
    assert first["settings"]["spec"]["steps"] == 256 and first["sha256"] == A.sha256

    assert cli("library", "remove", "b", "--library", lib) == 0
    assert "2 image(s)" in capsys.readouterr().out
    assert [e.label for e in ProbeLibrary(lib).checkpoints()] == ["a", "c"]
    assert len(list(filled.cells_dir.glob("*/*.png"))) == 4  # b's files are gone

    assert cli("library", "clear", "--library", lib) == 0
    assert "4 image(s)" in capsys.readouterr().out
    assert ProbeLibrary(lib).checkpoints() == [] and not list(filled.cells_dir.glob("*/*.png"))


def test_errors_name_the_thing_and_the_reason(filled, tmp_path, capsys):
    lib = str(filled.root)
    assert cli("library", "list", "--library", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "no probe library here" in err
    assert cli("library", "show", "zzz", "--library", lib) == 2
    err = capsys.readouterr().err
    assert "'zzz': no such checkpoint" in err and "a (" in err
    assert cli("library", "remove", "abc", "--library", lib) == 2
    assert "at least 6 hex digits" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli("library", "export", str(tmp_path / "file" / "out"), "--library", lib) == 2
    assert "cannot create the export folder" in capsys.readouterr().err


def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch, capsys):
    from cfgsim.library import default_library_dir

    monkeypatch.setenv("CFGSIM_LIBRARY", str(tmp_path / "mine"))
    assert default_library_dir() == tmp_path / "mine"
    monkeypatch.delenv("CFGSIM_LIBRARY")
    monkeypatch.setenv("CFGSIM_CACHE_DIR", str(tmp_path / "cache"))
    assert default_library_dir() == tmp_path / "cache" / "library"
    monkeypatch.delenv("CFGSIM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_library_dir() == tmp_path / "xdg" / "cfgsim" / "library"
    assert default_library_dir(kind="webui", webui_data_dir="/data") == type(tmp_path)("/data/cfgsim-library")


# -- cfgsim probe / demo ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    pytest.importorskip("diffusers")
    from cfgsim.standalone.demo import build_family

    return build_family(tmp_path_factory.mktemp("fam"))


def test_probe_takes_a_rerun_from_the_library_and_adds_library_columns(family, tmp_path, capsys):
    lib = str(tmp_path / "lib")
    quick = ["--steps-override", "1", "--seeds", "1", "--config-dir", str(family.config_dir), "--no-overlays"]
    two = [str(p) for p in family.checkpoints[:2]]
    assert cli("probe", *two, *quick, "--library", lib, "--out", str(tmp_path / "o1")) == 0
    assert "library: 0 of 2 image(s) from the probe library, 2 stored" in capsys.readouterr().out
    assert cli("probe", *two, *quick, "--library", lib, "--out", str(tmp_path / "o2")) == 0
    assert "library: 2 of 2 image(s) from the probe library, 0 stored" in capsys.readouterr().out
    one = [str(family.checkpoints[0])]
    assert cli("probe", *one, *quick, "--library", lib, "--with-library", "--out", str(tmp_path / "o3")) == 0
    from cfgsim.metadata import read_result

    result = read_result(tmp_path / "o3" / "grid.png")
    assert result.labels == ["base", "finetune (library)"]
    assert [c.origin for c in result.cells] == ["library", "library"]
    capsys.readouterr()
    assert cli("probe", *one, *quick, "--no-library", "--with-library", "--out", str(tmp_path / "o4")) == 2
    assert "--no-library: cannot be combined" in capsys.readouterr().err


def test_demo_and_the_python_api_use_the_library(family, tmp_path, capsys):
    lib = str(tmp_path / "lib")
    quick = ["--size", "64", "--steps", "1", "--out", str(tmp_path / "demo"), "--library", lib]
    assert cli("demo", *quick) == 0
    assert "library: 0 of 5 image(s) from the probe library, 5 stored" in capsys.readouterr().out
    assert cli("demo", *quick) == 0
    assert "library: 5 of 5 image(s) from the probe library, 0 stored" in capsys.readouterr().out

    import cfgsim
    from cfgsim.spec import ProbeSpec

    spec = ProbeSpec(width=64, height=64, steps=1)
    paths = family.checkpoints[:2]
    first = cfgsim.probe_checkpoints(paths, spec=spec, config_dir=family.config_dir, library=tmp_path / "api")
    again = cfgsim.probe_checkpoints(paths, spec=spec, config_dir=family.config_dir, library=tmp_path / "api")
    assert [c.origin for c in first.cells] == ["", ""] and [c.origin for c in again.cells] == ["library"] * 2
    plain = cfgsim.probe_checkpoints(paths, spec=spec, config_dir=family.config_dir)  # no library by default
    assert [c.origin for c in plain.cells] == ["", ""]


# -- the WebUI script ------------------------------------------------------------------------------


def test_with_library_is_the_last_script_argument():
    assert controls.CONTROL_NAMES[-1] == "with_library"
    assert controls.unpack([["a"]]).with_library is False
    assert controls.unpack(script_args(["a"], with_library=True)).with_library is True


def test_webui_library_in_the_data_folder(webui, p, tmp_path):
    web = webui()
    data = tmp_path / "webui-data"
    web.modules["modules.shared"].cmd_opts.data_dir = str(data)
    script = web.script.Script()
    script.run(p, *script_args(["base", "other"], seeds="1, 2"))
    assert len(web.received) == 4
    assert (data / "cfgsim-library" / "index.sqlite3").is_file()
    web.received.clear()
    processed = script.run(p, *script_args(["base", "other"], seeds="1, 2"))
    assert web.received == []  # every image from the library: nothing generated, nothing loaded
    info = json.loads(processed.js())["extra_generation_params"]["cfgsim"]
    assert [c.get("origin") for c in info["cells"]] == ["library"] * 4
    processed = script.run(p, *script_args(["base"], seeds="1, 2", with_library=True))
    info = json.loads(processed.js())["extra_generation_params"]["cfgsim"]
    assert [item["label"] for item in info["items"]] == ["base", "other (library)"]
    assert web.received == []
    text = library_webui.size_text(True, "", str(data))
    assert "4 image(s)" in text and str(data / "cfgsim-library") in text
    shared = web.modules["modules.shared"]
    assert "4 image(s)" in library_webui.panel_html(shared)
    assert "Probe library: 0 image(s)" in library_webui.panel_html(shared, clear=True)
    web.received.clear()
    script.run(p, *script_args(["base"], seeds="1"))
    assert len(web.received) == 1  # cleared: made again


def test_the_script_panel_shows_the_library_without_creating_it(webui, tmp_path):
    web = webui()
    web.modules["modules.shared"].cmd_opts.data_dir = str(tmp_path / "data")
    web.script.Script().ui(False)
    assert not (tmp_path / "data").exists()
    assert "empty" in library_webui.panel_html(web.modules["modules.shared"])
    web.opts.data["cfgsim_library"] = False
    assert "off" in library_webui.panel_html(web.modules["modules.shared"])


def test_webui_library_off_or_unknown_data_folder_stores_nothing(webui, p, tmp_path):
    web = webui()
    web.opts.data["cfgsim_library"] = False
    web.modules["modules.shared"].cmd_opts.data_dir = str(tmp_path / "data")
    web.script.Script().run(p, *script_args(["base"]))
    assert not (tmp_path / "data" / "cfgsim-library").exists()
    web = webui()  # no data_dir: the library is not used
    assert not hasattr(web.modules["modules.shared"].cmd_opts, "data_dir")
    web.script.Script().run(p, *script_args(["base"]))
    web.received.clear()
    web.script.Script().run(p, *script_args(["base"]))
    assert len(web.received) == 1
    assert library_webui.data_dir(types.SimpleNamespace(), types.SimpleNamespace(data_path="/d")) == "/d"
    assert os.fspath(library_webui.library_root("/x/lib", None)) == "/x/lib"


def test_an_api_request_may_turn_the_library_off_for_itself(webui, p, tmp_path):
    """``override_settings`` decide for that request, as for the cond-only setting."""
    web = webui()
    data = tmp_path / "webui-data"
    web.modules["modules.shared"].cmd_opts.data_dir = str(data)
    script = web.script.Script()
    script.run(p, *script_args(["base"], seeds="1"))
    web.received.clear()
    p.override_settings = {"cfgsim_library": False}
    script.run(p, *script_args(["base"], seeds="1"))
    assert len(web.received) == 1  # made again: the request turned the library off
    p.override_settings = {"cfgsim_library_dir": str(tmp_path / "elsewhere")}
    script.run(p, *script_args(["base"], seeds="1"))
    assert (tmp_path / "elsewhere" / "index.sqlite3").is_file()
    assert web.opts.data.get("cfgsim_library", True) is True  # the setting itself is untouched
