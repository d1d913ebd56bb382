"""A small JSON client for one WebUI server's HTTP API (A1111 / Forge started with ``--api``).

Standard library only (``urllib``, ``json``, ``base64``): the remote host works in an install without
torch or requests. Every failure is a :class:`RemoteError` that names the server and says why, in
words a user can act on:

- :class:`ServerUnreachable` — no answer (refused, name not resolved, reset, timed out) or a gateway
  error (502/503/504). The only kind worth retrying: the executor backs off and tries again.
- :class:`AuthFailed` — 401/403: the server was started with ``--api-auth`` and the credentials are
  missing or wrong.
- :class:`NoApi` — 404 on ``/sdapi``: a WebUI started without ``--api`` (or not a WebUI at all).
- :class:`BadResponse` — an answer that is not the JSON the API gives.
- :class:`ServerError` — the server answered with an error (500 and the like): it raised while
  handling the request (a generation that failed, a checkpoint that did not load).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cfgsim.errors import CfgsimError, InputError

DEFAULT_QUERY_TIMEOUT = 30.0
DEFAULT_GENERATE_TIMEOUT = 1800.0
RETRYABLE_STATUS = frozenset({502, 503, 504})


class RemoteError(CfgsimError):
    """A failure talking to one server; ``url`` names it, ``reason`` says why."""

    retryable = False

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class ServerUnreachable(RemoteError):
    retryable = True


class AuthFailed(RemoteError):
    pass


class NoApi(RemoteError):
    pass


class BadResponse(RemoteError):
    pass


class ServerError(RemoteError):
    def __init__(self, url: str, reason: str, status: int = 500, detail: str = "") -> None:
        super().__init__(url, reason)
        self.status = status
        self.detail = detail


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:pass`` (as the WebUI's ``--api-auth`` takes it) → (user, password); None/"" → None."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise InputError("--api-auth: expected USER:PASSWORD")
    return user, password


def normalize_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """(base URL without credentials or trailing slash, credentials given in the URL or None).

    ``127.0.0.1:7860`` → ``http://127.0.0.1:7860``; ``http://u:p@host:7860/`` → (``http://host:7860``,
    ("u", "p")).
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--webui {url!r}: not an http(s) URL")
    auth = None
    netloc = parts.netloc
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        user, _, password = creds.partition(":")
        auth = (urllib.parse.unquote(user), urllib.parse.unquote(password))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), auth


def _detail(body: bytes) -> str:
    """The error text of an API error body: FastAPI's ``detail``, A1111's ``error``/``errors``."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300]
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("error", "detail", "errors") if data.get(k)]
        return ": ".join(dict.fromkeys(parts))[:500]
    return str(data)[:300]


class WebUIClient:
    """GET/POST JSON to one server. ``timeout``: seconds for a generation request; queries use the
    smaller of it and :data:`DEFAULT_QUERY_TIMEOUT`."""

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.url, url_auth = normalize_url(url)
        if isinstance(auth, str):
            auth = parse_auth(auth)
        self.auth = auth or url_auth
        self.timeout = float(timeout) if timeout else DEFAULT_GENERATE_TIMEOUT
        self.query_timeout = min(self.timeout, DEFAULT_QUERY_TIMEOUT)

    def __repr__(self) -> str:
        return f"WebUIClient({self.url!r})"

    def _headers(self, payload: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if payload:
            headers["Content-Type"] = "application/json"
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        return headers

    def get(self, path: str, *, timeout: float | None = None) -> Any:
        return self.request("GET", path, None, timeout=timeout)

    def post(self, path: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, {} if payload is None else payload, timeout=timeout)

    def request(self, method: str, path: str, payload: Any, *, timeout: float | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self._headers(data is not None)
        )
        wait = self.query_timeout if timeout is None else timeout
        try:
            with urllib.request.urlopen(req, timeout=wait) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read() if exc.fp is not None else b""
            raise self._http_error(exc.code, path, body) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServerUnreachable(self.url, f"no answer within {wait:g} s ({method} {path})") from None
            raise ServerUnreachable(self.url, f"cannot connect ({_os_reason(reason)})") from None
        except TimeoutError:
            raise ServerUnreachable(self.url, f"no answer within {wait:g} s ({method} {path})") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise ServerUnreachable(
                self.url, f"connection lost during {method} {path} ({_os_reason(exc)})"
            ) from None
        if not body.strip():
            return None
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            start = body[:80].decode("utf-8", "replace").strip().replace("\n", " ")
            raise BadResponse(
                self.url, f"{method} {path} answered with something that is not JSON: {start!r}"
            ) from None

    def _http_error(self, status: int, path: str, body: bytes) -> RemoteError:
        detail = _detail(body)
        if status in {401, 403}:
            if self.auth is None:
                why = "the server requires a user and password (its --api-auth): give --api-auth USER:PASS"
            else:
                why = f"user {self.auth[0]!r} and that password were refused (check --api-auth)"
            return AuthFailed(self.url, f"HTTP {status} {detail or 'Unauthorized'}: {why}")
        if status == 404 and path.startswith("/sdapi/"):
            return NoApi(
                self.url,
                f"HTTP 404 on {path}: no WebUI API here (start the WebUI with --api)",
            )
        if status in RETRYABLE_STATUS:
            return ServerUnreachable(self.url, f"HTTP {status} on {path} {detail}".strip())
        return ServerError(self.url, f"HTTP {status} on {path}: {detail or 'no detail'}", status, detail)


def _os_reason(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text or type(exc).__name__
