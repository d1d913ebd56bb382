"""The standalone probe runner: the CFG 1 probe on SD 1.x single-file checkpoints, without the WebUI.

It reproduces the WebUI's probe image (AUTOMATIC1111 v1.8, ``modules/processing.py`` with the
k-diffusion Euler sampler) with diffusers' model classes and a sampler loop of its own:

* :mod:`.checkpoint` reads ``.safetensors`` / ``.ckpt`` files safely, hashes them the WebUI's way
  and tells the architecture from the key names;
* :mod:`.keymap` maps the original (ldm/CompVis) key layout to diffusers' and back;
* :mod:`.schedule` and :mod:`.noise` are the WebUI's sigma schedule and initial noise (CPU, NV, GPU);
* :mod:`.pipeline` encodes the prompt (clip skip), samples (Euler, DDIM) and decodes like the WebUI;
* :mod:`.host` is :class:`~cfgsim.host.Host` for the shared run loop, :mod:`.demo` builds a tiny
  model family and probes it, :mod:`.commands` registers ``cfgsim probe`` and ``cfgsim demo``.

torch, diffusers and transformers are an optional extra (``cfgsim[standalone]``). Importing this
package and :mod:`.commands` needs none of them: the heavy modules are imported inside functions.
"""
