"""The probe on running WebUI servers over their HTTP API (the "third host"; torch-free).

- :mod:`cfgsim.remote.client`    JSON over HTTP to one server: timeouts, basic auth, clear errors
- :mod:`cfgsim.remote.host`      one server as a :class:`cfgsim.host.Host`: the probe as a txt2img
  request, checkpoints, environment, putting options back
- :mod:`cfgsim.remote.selection` which server holds which of the user's checkpoints
- :mod:`cfgsim.remote.executor`  several servers as one run: a thread per server, retries, drops
- :mod:`cfgsim.remote.commands`  ``cfgsim probe --webui URL …``
"""

from cfgsim.remote.client import (
    AuthFailed,
    BadResponse,
    NoApi,
    RemoteError,
    ServerError,
    ServerUnreachable,
    WebUIClient,
)
from cfgsim.remote.executor import MultiHost, MultiServerExecutor
from cfgsim.remote.host import RemoteHost, ServerModel
from cfgsim.remote.request import txt2img_payload
from cfgsim.remote.selection import resolve

__all__ = [
    "AuthFailed",
    "BadResponse",
    "MultiHost",
    "MultiServerExecutor",
    "NoApi",
    "RemoteError",
    "RemoteHost",
    "ServerError",
    "ServerModel",
    "ServerUnreachable",
    "WebUIClient",
    "resolve",
    "txt2img_payload",
]
