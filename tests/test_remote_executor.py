"""Several stand-in servers as one run: sharing, drops, retries, placement, Ctrl-C, the command."""

from __future__ import annotations

import json
import threading

import pytest

from cfgsim.cli import main
from cfgsim.metadata import read_metadata
from cfgsim.probe import run_probe
from cfgsim.remote import MultiHost, MultiServerExecutor, RemoteHost, WebUIClient, resolve
from cfgsim.result import FAILED, SKIPPED
from cfgsim.spec import ProbeSpec
from tests.fake_webui_server import FakeServer, FakeWebUI, free_port_url, model

SPEC = ProbeSpec(seeds=(1, 2, 3), width=64, height=64, steps_override=2)
NAMES = ["m0", "m1", "m2", "m3"]


def fakes(n=2, names=NAMES, **kw):
    return [FakeWebUI([model(x) for x in names], **kw) for _ in range(n)]


def probe(servers, names, spec=SPEC, executor_kw=None, on_line=None):
    hosts = [RemoteHost(WebUIClient(s.url, timeout=10)).connect() for s in servers]
    checkpoints, placements, _ = resolve(hosts, names)
    facade = MultiHost(hosts, placements)
    lines: list[str] = []

    def report(line):
        lines.append(line)
        if on_line:
            on_line(line, facade)

    executor = MultiServerExecutor(facade, backoff=0.01, report=report, **(executor_kw or {}))
    result = run_probe(facade, checkpoints, spec, executor=executor)
    return result, executor, lines


def label(server):
    return server.url.split("//")[1]


def test_two_servers_share_the_work_one_load_per_checkpoint_per_server():
    a, b = fakes(delay=0.05)
    with FakeServer(a) as sa, FakeServer(b) as sb:
        result, executor, lines = probe([sa, sb], NAMES)
        assert all(c.ok for c in result.cells) and len(result.cells) == 12
        made = list(executor.made_by.values())
        assert made.count(label(sa)) > 0 and made.count(label(sb)) > 0
        for fake in (a, b):  # whole checkpoints per server: each loaded once
            assert len(fake.loads) == len(set(fake.loads))
        assert sorted(a.loads + b.loads) == NAMES
        # the images are the server's, whichever made them: same checkpoint+seed → same pixels
        assert any(f"[{label(sa)}]" in line for line in lines) and any(
            f"[{label(sb)}]" in line for line in lines
        )


def test_same_image_from_either_server():
    a, b = fakes(names=["m0"])
    with FakeServer(a) as sa, FakeServer(b) as sb:
        one, _, _ = probe([sa], ["m0"])
        two, _, _ = probe([sb], ["m0"])
        assert [c.image.tobytes() for c in one.cells] == [c.image.tobytes() for c in two.cells]


def test_a_server_killed_mid_run_loses_nothing_and_its_work_moves():
    a, b = fakes(delay=0.02)
    a.kill_after = 4
    with FakeServer(a) as sa, FakeServer(b) as sb:
        result, executor, lines = probe([sa, sb], NAMES, executor_kw={"retries": 2})
        assert all(c.ok for c in result.cells), [c.reason for c in result.cells]
        made_by_a = [k for k, v in executor.made_by.items() if v == label(sa)]
        assert len(made_by_a) == 4  # every image A finished before it died is kept
        assert label(sa) in executor.dropped and "cannot connect" in executor.dropped[label(sa)]
        assert any("dropped" in line for line in lines)
        assert any("retrying in" in line for line in lines)


def test_retries_with_back_off_then_success():
    (fake,) = fakes(1, names=["m0"])
    fake.fail_next = 2
    with FakeServer(fake) as server:
        result, executor, lines = probe([server], ["m0"], executor_kw={"retries": 3})
        assert all(c.ok for c in result.cells) and executor.dropped == {}
        retries = [line for line in lines if "retrying in" in line]
        assert len(retries) == 2 and "0.01 s (1/3)" in retries[0] and "0.02 s (2/3)" in retries[1]


def test_a_server_that_stays_down_is_dropped_and_its_cells_fail_with_the_reason():
    (fake,) = fakes(1, names=["m0", "m1"])
    fake.fail_next = 100
    with FakeServer(fake) as server:
        result, _executor, _ = probe([server], ["m0", "m1"], executor_kw={"retries": 1})
        assert {c.status for c in result.cells} == {FAILED}
        assert all("dropped" in c.reason and label(server) in c.reason for c in result.cells)
        assert fake.option_posts == []  # a dropped server is not touched again


def test_a_checkpoint_on_one_server_goes_only_there():
    a = FakeWebUI([model("shared"), model("only-a")], delay=0.01)
    b = FakeWebUI([model("shared"), model("only-b")], delay=0.01)
    with FakeServer(a) as sa, FakeServer(b) as sb:
        result, executor, _ = probe([sa, sb], ["only-a", "only-b", "shared"])
        assert all(c.ok for c in result.cells)
        columns = {item.label: i for i, item in enumerate(result.items)}
        by = executor.made_by
        assert {by[(columns["only-a"], r)] for r in range(3)} == {label(sa)}
        assert {by[(columns["only-b"], r)] for r in range(3)} == {label(sb)}
        assert "only-b" not in a.loads and "only-a" not in b.loads


def test_failed_images_and_mismatching_files_are_failed_cells():
    a = FakeWebUI([model("m0", hashed=False, content="one")], error_seeds={2})
    b = FakeWebUI([model("m0", hashed=False, content="two")], delay=0.05)
    with FakeServer(a) as sa:
        result, _, _ = probe([sa], ["m0"])
        assert [c.status for c in result.cells] == ["ok", FAILED, "ok"]
        assert "CUDA out of memory at seed 2" in result.cells[1].reason
    a.error_seeds = set()
    a.delay = 0.3
    with FakeServer(a) as sa, FakeServer(b) as sb:
        spec = SPEC.replace(seeds=(1, 2, 3, 4, 5, 6))
        # one checkpoint, two servers, no hash to compare: the images' Model hash tells them apart
        hosts = [RemoteHost(WebUIClient(s.url)).connect() for s in (sa, sb)]
        checkpoints, placements, notes = resolve(hosts, ["m0"])
        assert notes and "not hashed yet" in notes[0]
        # two jobs of the same checkpoint (as after a drop): split the seeds over both servers
        facade = MultiHost(hosts, placements)
        executor = MultiServerExecutor(facade, report=lambda line: None)
        from cfgsim.probe import Job

        job = checkpoints[0]
        cells_before = run_probe(
            facade, checkpoints, spec, executor=_Split(executor, [Job(0, job, [0, 1, 2], [1, 2, 3]),
                                                                  Job(0, job, [3, 4, 5], [4, 5, 6])])
        )  # fmt: skip
        reasons = [c.reason for c in cells_before.cells if c.status == FAILED]
        assert reasons and all("a different checkpoint" in r for r in reasons)


class _Split:
    """Hands the executor the given jobs instead of the run loop's one job per checkpoint."""

    def __init__(self, executor, jobs):
        self.executor, self.jobs = executor, jobs

    def execute(self, host, spec, jobs, sink):
        self.executor.execute(host, spec, self.jobs, sink)


def test_stop_keeps_what_is_done():
    a, b = fakes(delay=0.02)
    seen = []

    def on_line(line, facade):
        if line.endswith("/12)"):
            seen.append(line)
            if len(seen) == 3:
                facade.stop_event.set()  # what the run loop sees as "the user asked to stop"

    with FakeServer(a) as sa, FakeServer(b) as sb:
        result, _, _ = probe([sa, sb], NAMES, on_line=on_line)
        ok = [c for c in result.cells if c.ok]
        assert result.interrupted and 3 <= len(ok) < 12
        assert {c.status for c in result.cells if not c.ok} == {SKIPPED}
        assert all(c.reason == "not run: interrupted" for c in result.cells if not c.ok)


def test_ctrl_c_interrupts_the_servers_and_drops_the_cut_image():
    a, b = fakes(delay=5.0)
    with FakeServer(a) as sa, FakeServer(b) as sb:
        hosts = [RemoteHost(WebUIClient(s.url)).connect() for s in (sa, sb)]
        checkpoints, placements, _ = resolve(hosts, NAMES)
        facade = MultiHost(hosts, placements)
        executor = MultiServerExecutor(facade, report=lambda line: None)
        threading.Timer(0.5, executor.interrupt).start()
        result = run_probe(facade, checkpoints, SPEC, executor=executor)
        assert result.interrupted and not any(c.ok for c in result.cells)
        assert a.interrupt_calls == 1 and b.interrupt_calls == 1
        assert a.images_made + b.images_made <= 2  # the cut images were made and dropped


def test_the_command(tmp_path, capsys, monkeypatch):
    a = FakeWebUI([model("base"), model("finetune")], auth=("u", "p"))
    b = FakeWebUI([model("base"), model("finetune")], auth=("u", "p"))
    with FakeServer(a) as sa, FakeServer(b) as sb:
        out = tmp_path / "out"
        args = ["-q", "probe", "--webui", sa.url, "--webui", sb.url, "base", "finetune", "--seeds", "1,2",
                "--steps-override", "2", "--out", str(out), "--metrics", "ssim"]  # fmt: skip
        assert main(args) == 2  # no credentials
        assert "requires a user and password" in capsys.readouterr().err
        monkeypatch.setenv("CFGSIM_API_AUTH", "u:p")
        assert main(args) == 0, capsys.readouterr()
        printed = capsys.readouterr().out
        assert "base: on" in printed and "probed 2 checkpoint(s)" in printed
        saved = json.loads((out / "result.json").read_text())
        assert [i["label"] for i in saved["items"]] == ["base", "finetune"]
        assert saved["environment"]["WebUI"] == "AUTOMATIC1111" and saved["host"] == "webui"
        assert sorted(p.name for p in (out / "cells").iterdir())[:1] and (out / "grid.png").exists()
        assert read_metadata(out / "grid.png")[0]


def test_the_command_with_a_wrong_password_and_an_unreachable_url(tmp_path, capsys):
    with FakeServer(FakeWebUI([model("base")], auth=("u", "p"))) as server:
        base = ["probe", "base", "--out", str(tmp_path), "--steps-override", "2"]
        assert main([*base, "--webui", server.url, "--api-auth", "u:wrong"]) == 2
        err = capsys.readouterr().err
        assert server.url in err and "HTTP 401" in err and "refused" in err
    url = free_port_url()
    assert main([*base, "--webui", url]) == 2
    err = capsys.readouterr().err
    assert url in err and "cannot connect" in err


@pytest.fixture(autouse=True)
def _no_user_library(monkeypatch, tmp_path):
    monkeypatch.setenv("CFGSIM_LIBRARY", str(tmp_path / "library"))
