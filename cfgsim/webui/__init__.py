"""The WebUI adapter, without the WebUI: everything ``scripts/cfgsim_probe.py`` does except
importing ``modules`` and gradio and declaring the ``Script``.

The script hands the WebUI's modules in as a :class:`~cfgsim.webui.context.WebUI`, so all of it
runs against small fakes in tests. By job:

- :mod:`cfgsim.webui.context`  the WebUI's modules as one object; its name, version, precision
- :mod:`cfgsim.webui.options`  the one table of forced and recorded options; snapshots of options
- :mod:`cfgsim.webui.host`     the probe's :class:`~cfgsim.host.Host` inside the WebUI process
- :mod:`cfgsim.webui.restore`  putting options and the loaded checkpoint back after a run
- :mod:`cfgsim.webui.run`      one run: reference, spec, run loop, drawing, saving, ``Processed``
- :mod:`cfgsim.webui.settings` the Settings section and reading it back
- :mod:`cfgsim.webui.ui`       the controls' event handlers and the reference box
"""

from cfgsim.webui.context import WebUI
from cfgsim.webui.host import WebUIHost, probe_processing
from cfgsim.webui.restore import RestoreWebUI
from cfgsim.webui.run import run_probe_script

__all__ = ["RestoreWebUI", "WebUI", "WebUIHost", "probe_processing", "run_probe_script"]
