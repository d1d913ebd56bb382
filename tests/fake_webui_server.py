"""A local stand-in for an A1111/Forge server's HTTP API, for the remote host's tests.

Endpoints and JSON shapes as A1111 1.8 / Forge answer them (``modules/api/api.py``): ``sd-models``,
``options`` GET/POST, ``txt2img`` (base64 PNG ``images`` + ``info`` JSON string with ``infotexts``,
``sd_model_name``, ``sd_model_hash``, ``version``), ``interrupt``, ``progress``, ``scripts``,
``cmd-flags``, ``schedulers`` (Forge only), ``/internal/sysinfo``; ``--api-auth`` semantics (401 on
every ``/sdapi`` route without the right Basic credentials); no ``--api`` → 404 on ``/sdapi``.

Options and checkpoints behave as in A1111 1.8's ``process_images``: overrides are applied, the
checkpoint override loads the model only when another one is loaded, and with
``override_settings_restore_afterwards`` the options that had an entry in ``opts.data`` are put back
without reloading (keys without an entry are not: set ``absent`` to simulate a fresh install).

Images are smooth noise seeded by (checkpoint, seed, steps, size, clip skip, sampler, scheduler,
RNG setting): deterministic, different per checkpoint and seed. Switches: ``kill_after`` (die
during the N+1-th image: the connection drops, the port closes), ``fail_next`` (drop the next N
connections to txt2img without answering), ``error_seeds`` (a 500 for those seeds), ``delay``
(seconds per image, cut short by an interrupt).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

A1111_VERSION = "v1.8.0-RC"
FORGE_VERSION = "f2.0.1v1.10.1-1.10.1"


def model(name: str, *, hashed: bool = True, content: str | None = None, folder: str = "/models") -> dict:
    """An sd-models entry; ``content`` decides the sha256 (default: the name)."""
    sha = hashlib.sha256((content or name).encode()).hexdigest()
    short = sha[:10] if hashed else None
    file = f"{folder}/{name}.safetensors"
    title = f"{name}.safetensors" + (f" [{short}]" if short else "")
    return {
        "title": title,
        "model_name": name,
        "hash": short,
        "sha256": sha if hashed else None,
        "filename": file,
        "config": None,
        "_sha": sha,
    }


def smooth_noise(key: str, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC)


@dataclass
class FakeWebUI:
    models: list[dict]
    forge: bool = False
    auth: tuple[str, str] | None = None
    api: bool = True
    version: str = ""
    with_probe_script: bool = False
    absent: set[str] = field(default_factory=set)  # options with no entry in opts.data
    kill_after: int | None = None
    fail_next: int = 0
    error_seeds: set[int] = field(default_factory=set)
    delay: float = 0.0
    garbage: bool = False  # answer sd-models with an HTML page (a proxy's error page, say)
    # -- what happened --
    data: dict[str, Any] = field(default_factory=dict)
    loaded: str | None = None
    loads: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    option_posts: list[dict] = field(default_factory=list)
    images_made: int = 0
    interrupted: bool = False
    interrupt_calls: int = 0
    killed: bool = False

    def __post_init__(self) -> None:
        self.version = self.version or (FORGE_VERSION if self.forge else A1111_VERSION)
        self.defaults: dict[str, Any] = {
            "sd_model_checkpoint": self.models[0]["title"] if self.models else None,
            "CLIP_stop_at_last_layers": 1,
            "token_merging_ratio": 0.0,
            "token_merging_ratio_hr": 0.0,
            "token_merging_ratio_img2img": 0.0,
            "randn_source": "GPU",
            "emphasis": "Original",
            "sd_vae": "Automatic",
            "eta_noise_seed_delta": 0,
            "s_churn": 0.0,
        }
        if self.forge:
            self.defaults.update({"forge_unet_storage_dtype": "Automatic", "forge_preset": "sd"})
        else:
            self.defaults["k_sched_type"] = "Automatic"
        for key, value in self.defaults.items():
            if key not in self.absent:
                self.data.setdefault(key, value)
        self.lock = threading.Lock()  # the WebUI's queue_lock: one generation at a time
        self.wake = threading.Event()

    # -- checkpoints --------------------------------------------------------------------------------

    def find(self, name: str | None) -> dict | None:
        for m in self.models:
            if name in (m["title"], m["model_name"], f"{m['model_name']}.safetensors", m["hash"]):
                return m
        return None

    def load(self, title: str) -> None:
        m = self.find(title)
        if self.loaded != m["title"]:
            self.loaded = m["title"]
            self.loads.append(m["model_name"])

    def options(self) -> dict[str, Any]:
        return {**self.defaults, **self.data}

    # -- generation ---------------------------------------------------------------------------------

    def txt2img(self, req: dict) -> dict:
        with self.lock:
            self.interrupted = False
            self.wake.clear()
            self.requests.append(req)
            overrides = dict(req.get("override_settings") or {})
            stored = {k: self.data[k] for k in overrides if k in self.data}
            if self.find(overrides.get("sd_model_checkpoint")) is None:
                overrides.pop("sd_model_checkpoint", None)
                self.load(self.options()["sd_model_checkpoint"])
            try:
                for key, value in overrides.items():
                    self.data[key] = value
                    if key == "sd_model_checkpoint":
                        self.load(value)
                if req.get("seed") in self.error_seeds:
                    raise RuntimeError(f"CUDA out of memory at seed {req.get('seed')}")
                if self.delay:
                    self.wake.wait(self.delay)
                return self._image(req)
            finally:
                if req.get("override_settings_restore_afterwards", True):
                    self.data.update(stored)  # no callbacks: the model stays loaded

    def _image(self, req: dict) -> dict:
        opts = self.options()
        m = self.find(self.loaded)
        w, h = int(req.get("width", 512)), int(req.get("height", 512))
        key = "|".join(
            str(x)
            for x in (
                m["_sha"], req.get("seed"), req.get("steps"), w, h, opts["CLIP_stop_at_last_layers"],
                req.get("sampler_name"), req.get("scheduler", opts.get("k_sched_type")), opts["randn_source"],
                req.get("prompt"), req.get("negative_prompt"), req.get("cfg_scale"),
            )
        )  # fmt: skip
        image = smooth_noise(key, w, h)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        self.images_made += 1
        infotext = (
            f"{req.get('prompt', '')}\nNegative prompt: {req.get('negative_prompt', '')}\n"
            f"Steps: {req.get('steps')}, Sampler: {req.get('sampler_name')}, "
            f"CFG scale: {req.get('cfg_scale')}, Seed: {req.get('seed')}, Size: {w}x{h}, "
            f"Model hash: {m['hash'] or m['_sha'][:10]}, Model: {m['model_name']}, "
            f"Clip skip: {opts['CLIP_stop_at_last_layers']}, Version: {self.version}"
        )
        info = {
            "prompt": req.get("prompt"),
            "seed": req.get("seed"),
            "sd_model_name": m["model_name"],
            "sd_model_hash": m["hash"] or m["_sha"][:10],
            "sd_vae_name": None,
            "infotexts": [infotext],
            "version": self.version,
        }
        return {
            "images": [base64.b64encode(buf.getvalue()).decode()],
            "parameters": req,
            "info": json.dumps(info),
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True  # no answer at all: the client sees the connection close

    def _authorized(self) -> bool:
        fake = self.server.fake
        if fake.auth is None:
            return True
        wanted = "Basic " + base64.b64encode(f"{fake.auth[0]}:{fake.auth[1]}".encode()).decode()
        return self.headers.get("Authorization") == wanted

    def _route(self, method: str) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0]
        body = None
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
        if path == "/internal/sysinfo":
            return self._send(200, json.dumps({"Version": fake.version, "Platform": "fake"}))
        if not path.startswith("/sdapi/") or not fake.api:
            return self._send(404, {"detail": "Not Found"})
        if not self._authorized():
            return self._send(
                401, {"detail": "Incorrect username or password"}, {"WWW-Authenticate": "Basic"}
            )
        key = (method, path)
        if key == ("GET", "/sdapi/v1/sd-models") and fake.garbage:
            data = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if key == ("GET", "/sdapi/v1/sd-models"):
            return self._send(
                200, [{k: v for k, v in m.items() if not k.startswith("_")} for m in fake.models]
            )
        if key == ("GET", "/sdapi/v1/options"):
            return self._send(200, fake.options())
        if key == ("POST", "/sdapi/v1/options"):
            fake.option_posts.append(body)
            ckpt = body.get("sd_model_checkpoint")
            if ckpt is not None and fake.find(ckpt) is None:
                return self._send(
                    500, {"error": "RuntimeError", "detail": "", "errors": f"model {ckpt!r} not found"}
                )
            fake.data.update(body)
            if ckpt is not None:
                fake.load(ckpt)
            return self._send(200, None)
        if key == ("GET", "/sdapi/v1/cmd-flags"):
            return self._send(200, {"no_half": True, "precision": "full", "api": True, "use_cpu": ["all"]})
        if key == ("GET", "/sdapi/v1/schedulers") and fake.forge:
            return self._send(200, [{"name": "automatic", "label": "Automatic"}])
        if key == ("GET", "/sdapi/v1/scripts"):
            names = ["prompt matrix", "x/y/z plot"] + (
                ["cfg 1.0 similarity probe"] if fake.with_probe_script else []
            )
            return self._send(200, {"txt2img": names, "img2img": names})
        if key == ("GET", "/sdapi/v1/progress"):
            state = {"interrupted": fake.interrupted, "skipped": False, "job_count": 0}
            return self._send(200, {"progress": 0.0, "eta_relative": 0.0, "state": state})
        if key == ("POST", "/sdapi/v1/interrupt"):
            fake.interrupt_calls += 1
            fake.interrupted = True
            fake.wake.set()
            return self._send(200, {})
        if key == ("POST", "/sdapi/v1/txt2img"):
            if fake.fail_next > 0:
                fake.fail_next -= 1
                return self._drop()
            if fake.kill_after is not None and fake.images_made >= fake.kill_after:
                self.server.kill()
                return self._drop()
            try:
                return self._send(200, fake.txt2img(body))
            except RuntimeError as exc:
                return self._send(
                    500, {"error": "RuntimeError", "detail": "", "body": "", "errors": str(exc)}
                )
        return self._send(404, {"detail": "Not Found"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeWebUI

    def kill(self) -> None:
        """Die like a crashed WebUI: the port closes; requests in flight get no answer."""
        self.fake.killed = True
        threading.Thread(target=self.stop, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class FakeServer:
    """``with FakeServer(FakeWebUI([...])) as server: server.url`` — on a free local port."""

    def __init__(self, fake: FakeWebUI) -> None:
        self.fake = fake
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.fake = fake
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.fake.killed:
            self.httpd.stop()
        self.thread.join(5)


def free_port_url() -> str:
    """A URL where nothing listens (a port bound and closed again)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    time.sleep(0.01)
    return f"http://127.0.0.1:{port}"
