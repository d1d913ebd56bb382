"""cfgsim: the CFG 1.0 similarity probe.

Run every checkpoint under one fixed probe that shows the model's own prior (empty prompt, CFG 1 =
no guidance, one fixed seed), then compare the pictures: checkpoints of one lineage turn the same
noise into similar pictures. This package is the library under the WebUI extension; it never
imports the WebUI (``modules``), gradio or ``launch``.
"""

__version__ = "0.1.0"
