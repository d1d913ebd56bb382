"""The remote host against the stand-in server: the client's errors, matching, the request, options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cfgsim.errors import InputError
from cfgsim.host import Checkpoint
from cfgsim.probe import run_probe
from cfgsim.remote import (
    AuthFailed,
    BadResponse,
    MultiHost,
    MultiServerExecutor,
    NoApi,
    RemoteHost,
    ServerUnreachable,
    WebUIClient,
    resolve,
)
from cfgsim.remote.commands import connect
from cfgsim.spec import ProbeSpec
from tests.fake_webui_server import FakeServer, FakeWebUI, free_port_url, model

SPEC = ProbeSpec(seeds=(1, 2, 3), width=64, height=64, steps_override=2)


def host_for(server: FakeServer, auth=None) -> RemoteHost:
    return RemoteHost(WebUIClient(server.url, auth, timeout=10)).connect()


@pytest.fixture
def a1111():
    with FakeServer(FakeWebUI([model("base"), model("finetune"), model("other", hashed=False)])) as server:
        yield server


# -- errors -----------------------------------------------------------------------------------------


def test_wrong_credentials_name_the_url_and_the_reason():
    with FakeServer(FakeWebUI([model("base")], auth=("user", "pass"))) as server:
        with pytest.raises(AuthFailed) as wrong:
            host_for(server, "user:nope")
        assert server.url in str(wrong.value) and "401" in str(wrong.value) and "refused" in str(wrong.value)
        with pytest.raises(AuthFailed) as missing:
            host_for(server)
        assert "--api-auth" in str(missing.value) and "requires" in str(missing.value)
        assert host_for(server, "user:pass").models[0].model_name == "base"
        # user:pass@ in the URL works as well
        url = server.url.replace("http://", "http://user:pass@")
        assert RemoteHost(WebUIClient(url)).connect().url == server.url


def test_unreachable_url_is_a_clear_error():
    url = free_port_url()
    with pytest.raises(ServerUnreachable) as exc:
        RemoteHost(WebUIClient(url, timeout=2)).connect()
    assert url in str(exc.value) and "cannot connect" in str(exc.value)
    with pytest.raises(InputError, match=r"no WebUI server answered.*cannot connect"):
        connect([url], None, 2, say=lambda line: None)


def test_server_without_api_and_non_json_answers():
    with FakeServer(FakeWebUI([model("base")], api=False)) as server:
        with pytest.raises(NoApi, match="--api") as exc:
            host_for(server)
        assert server.url in str(exc.value)
    with FakeServer(FakeWebUI([model("base")], garbage=True)) as server:
        with pytest.raises(BadResponse, match="sd-models answered with something that is not JSON") as exc:
            host_for(server)
        assert server.url in str(exc.value) and "<html>" in str(exc.value)


def test_one_server_down_at_the_start_is_left_out_with_a_note(a1111):
    notes = []
    hosts = connect([free_port_url(), a1111.url], None, 2, say=notes.append)
    assert [h.url for h in hosts] == [a1111.url]
    assert notes and "left out" in notes[0] and "cannot connect" in notes[0]


# -- matching ---------------------------------------------------------------------------------------


def test_checkpoints_match_by_title_name_file_and_hash(a1111, tmp_path):
    host = host_for(a1111)
    base = a1111.fake.models[0]
    for text in ("base", "base.safetensors", base["title"], "BASE", base["hash"], base["sha256"][:12],
                 f"[{base['hash']}]", base["sha256"]):  # fmt: skip
        assert [m.model_name for m in host.find(text)] == ["base"], text
    assert host.find("bas") == [] and host.find("0123456789") == []
    # the legacy hash, when the server's file is readable here
    data = bytes(range(256)) * 4500
    path = tmp_path / "legacy.safetensors"
    path.write_bytes(data)
    import hashlib

    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    host.models.append(host.models[0].__class__("legacy.safetensors", "legacy", None, None, str(path)))
    assert [m.model_name for m in host.find(legacy)] == ["legacy"]


def test_resolve_across_servers():
    one = FakeWebUI([model("base"), model("only-a")])
    two = FakeWebUI([model("base"), model("only-b"), model("clash", content="x")])
    three = FakeWebUI([model("clash", content="y")])
    with FakeServer(one) as a, FakeServer(two) as b, FakeServer(three) as c:
        hosts = [host_for(a), host_for(b), host_for(c)]
        checkpoints, placements, notes = resolve(hosts, ["only-b", "base", "only-a"])
        assert [ck.label for ck in checkpoints] == ["only-b", "base", "only-a"]
        assert [sorted(placements[ck.name]) for ck in checkpoints] == [[1], [0, 1], [0]]
        assert notes == []
        with pytest.raises(InputError, match=r"names different files.*give a hash"):
            resolve(hosts, ["clash"])
        sha = two.models[2]["sha256"]
        checkpoints, placements, _ = resolve(hosts, [sha[:12]])
        assert list(placements[checkpoints[0].name]) == [1]
        with pytest.raises(InputError, match=r"on none of the servers.*has base, only-a"):
            resolve(hosts, ["missing"])
        with pytest.raises(InputError, match="--labels: 1 labels for 2"):
            resolve(hosts, ["base", "only-a"], ["x"])


# -- the request ------------------------------------------------------------------------------------


def test_the_request_enforces_the_probe_a1111(a1111):
    host = host_for(a1111)
    made = host.generate(Checkpoint(a1111.fake.models[1]["title"]), SPEC, 1337)
    req = a1111.fake.requests[-1]
    assert made.image.size == (64, 64) and "Seed: 1337" in made.infotext
    expected = {
        "prompt": "", "negative_prompt": SPEC.negative_prompt, "styles": [], "sampler_name": "Euler",
        "steps": 2, "cfg_scale": 1.0, "seed": 1337, "subseed": -1, "subseed_strength": 0.0,
        "seed_resize_from_w": 0, "seed_resize_from_h": 0, "width": 64, "height": 64, "batch_size": 1,
        "n_iter": 1, "enable_hr": False, "refiner_checkpoint": None, "restore_faces": False, "tiling": False,
        "s_churn": 0.0, "eta": 0.0, "override_settings_restore_afterwards": True, "save_images": False,
        "send_images": True, "script_name": None, "alwayson_scripts": {},
    }  # fmt: skip
    assert {k: req[k] for k in expected} == expected
    assert "scheduler" not in req  # A1111 1.8: k_sched_type in the options instead
    assert req["override_settings"] == {
        "CLIP_stop_at_last_layers": 2,
        "token_merging_ratio": 0.0,
        "token_merging_ratio_hr": 0.0,
        "token_merging_ratio_img2img": 0.0,
        "k_sched_type": "Automatic",
        "sd_model_checkpoint": a1111.fake.models[1]["title"],
    }
    env = host.environment()
    assert env["WebUI"] == "AUTOMATIC1111" and env["Version"] == "v1.8.0-RC"
    assert env["RNG"] == "GPU" and env["Precision"] == "--no-half, --precision=full"
    assert made.settings["VAE in use"] == "from the checkpoint" and made.settings["Version"] == "v1.8.0-RC"


def test_the_request_on_forge_has_the_scheduler_and_no_k_sched_type():
    with FakeServer(FakeWebUI([model("base")], forge=True, with_probe_script=True)) as server:
        host = host_for(server)
        host.generate(host.checkpoints()[0], SPEC, 5)
        req = server.fake.requests[-1]
        assert req["scheduler"] == "Automatic" and "k_sched_type" not in req["override_settings"]
        assert host.environment()["WebUI"] == "Forge" and host.has_probe_script


def test_the_server_does_not_render_another_model_silently(a1111):
    host = host_for(a1111)
    # the server renders with what it has loaded when the override cannot be used
    a1111.fake.models[1]["title"] = "renamed"
    from cfgsim.host import CheckpointLoadError

    with pytest.raises(CheckpointLoadError, match="rendered with base"):
        a1111.fake.loaded = a1111.fake.models[0]["title"]
        host.generate(Checkpoint("finetune.safetensors [" + host.models[1].hash + "]"), SPEC, 1)


# -- options and the checkpoint afterwards ----------------------------------------------------------


def _probe(servers, names, spec=SPEC, **kw):
    hosts = [host_for(s) for s in servers]
    checkpoints, placements, _ = resolve(hosts, names)
    facade = MultiHost(hosts, placements)
    lines: list[str] = []
    executor = MultiServerExecutor(facade, backoff=0.01, report=lines.append, **kw)
    result = run_probe(facade, checkpoints, spec, executor=executor)
    return result, executor, lines


def test_one_load_per_checkpoint_and_nothing_posted_when_the_server_restores(a1111):
    a1111.fake.loaded = a1111.fake.models[0]["title"]
    result, executor, _ = _probe([a1111], ["finetune", "other", "base"])
    assert all(c.ok for c in result.cells) and len(result.cells) == 9
    assert a1111.fake.loads == ["finetune", "other"]  # base was loaded: it ran first, no load
    assert [r["override_settings"]["sd_model_checkpoint"] for r in a1111.fake.requests][:3] == [
        a1111.fake.models[0]["title"]
    ] * 3
    assert a1111.fake.option_posts == [] and executor.restored == {a1111.url.split("//")[1]: {}}
    assert a1111.fake.options()["sd_model_checkpoint"] == a1111.fake.models[0]["title"]
    assert a1111.fake.options()["CLIP_stop_at_last_layers"] == 1


def test_options_the_server_did_not_restore_are_put_back():
    fake = FakeWebUI(
        [model("base"), model("two")], absent={"CLIP_stop_at_last_layers", "sd_model_checkpoint"}
    )
    fake.data["sd_model_checkpoint"] = fake.models[1]["title"]  # the user's pick
    fake.absent.discard("sd_model_checkpoint")
    with FakeServer(fake) as server:
        result, _executor, _ = _probe([server], ["base"])
        assert all(c.ok for c in result.cells)
        # CLIP skip had no entry: the fake (as A1111) left it at 2; restore() put the old value back
        assert fake.option_posts == [{"CLIP_stop_at_last_layers": 1}]
        assert fake.options()["CLIP_stop_at_last_layers"] == 1
        assert fake.options()["sd_model_checkpoint"] == fake.models[1]["title"]


def test_remote_package_imports_no_torch():
    code = "import sys, cfgsim.remote, cfgsim.remote.commands; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
