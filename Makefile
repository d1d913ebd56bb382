# Two commands for a new user (see README):  `make demo`  and  `make test`.
# Each sets up what it needs in a virtual environment (.venv) on first use, then runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
# torch is installed on its own so the build can be chosen (CPU/CUDA) without touching the rest.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# The WebUI's pinned versions (A1111 1.8-1.10 and Forge): the core must work on them.
PINS   ?= Pillow==9.5.0 numpy==1.26.2 scikit-image==0.21.0 open-clip-torch==2.20.0
PINS_CORE ?= Pillow==9.5.0 numpy==1.26.2 scikit-image==0.21.0
# pyenv installs a python3.10 shim even where 3.10 is not the selected version: take the first
# interpreter that really runs.
PYTHON310 ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10; do \
	$$p -c '' 2>/dev/null && { command -v $$p || echo $$p; } && break; done)
PYTEST_ARGS ?=

.PHONY: demo test test-pins test-py310 lint bench setup clean

$(VENV)/.cfgsim-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e '.[standalone,clip,test,ray,scale]'
	touch $@

setup: $(VENV)/.cfgsim-installed

demo: setup
	$(VENV)/bin/cfgsim demo

test: setup
	$(VENV)/bin/python -m ruff check cfgsim scripts tests benchmarks install.py
	$(VENV)/bin/python -m ruff format --check cfgsim scripts tests benchmarks install.py
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# torch and what it brings (the CUDA build is 5.5 GB): .venv-pins reuses .venv's as hard links
# (no second copy on disk, 1 s instead of minutes) when both venvs have the same Python; pip then
# finds torch installed. Without .venv it installs torch itself.
TORCH_REUSE = torch 'torch-*.dist-info' torchgen functorch torchvision 'torchvision-*.dist-info' \
	torchvision.libs nvidia 'nvidia_*.dist-info' cuda 'cuda_*.dist-info' triton 'triton-*.dist-info' \
	sympy 'sympy-*.dist-info' mpmath 'mpmath-*.dist-info' networkx 'networkx-*.dist-info' jinja2 \
	'jinja2-*.dist-info' markupsafe 'markupsafe-*.dist-info' fsspec 'fsspec-*.dist-info' filelock \
	'filelock-*.dist-info' typing_extensions.py 'typing_extensions-*.dist-info'

# The WebUI's pins on this Python (with torch, so CLIP runs on open-clip-torch 2.20.0).
.venv-pins/.cfgsim-installed: pyproject.toml
	$(PYTHON) -m venv .venv-pins
	@src=$$(ls -d $(VENV)/lib/python3*/site-packages 2>/dev/null | head -1); \
	dst=$$(ls -d .venv-pins/lib/python3*/site-packages | head -1); \
	if [ -n "$$src" ] && [ "$${src##*/lib/}" = "$${dst##*/lib/}" ]; then \
		echo "reusing $$src's torch in .venv-pins (hard links)"; \
		for pat in $(TORCH_REUSE); do for f in $$src/$$pat; do \
			[ -e "$$f" ] && cp -al "$$f" "$$dst/" 2>/dev/null || true; done; done; \
	fi
	.venv-pins/bin/python -m pip install -q $(TORCH)
	.venv-pins/bin/python -m pip install -q $(PINS) scipy tqdm imagehash pytest hypothesis biopython
	.venv-pins/bin/python -m pip install -q --no-deps -e .
	touch $@

test-pins: .venv-pins/.cfgsim-installed
	.venv-pins/bin/python -m pip list 2>/dev/null | grep -iE '^(pillow|numpy|scikit-image|open.clip.torch) '
	.venv-pins/bin/python -m pytest -m 'not browser' --ignore=tests/test_standalone_demo.py $(PYTEST_ARGS)

# Python 3.10 (the WebUI's) with the pins; no torch there, so the CLIP tests skip with a reason.
.venv-py310/.cfgsim-installed: pyproject.toml
	@test -n "$(PYTHON310)" || { echo "make test-py310: no Python 3.10 interpreter found"; exit 1; }
	$(PYTHON310) -m venv .venv-py310
	.venv-py310/bin/python -m pip install -q $(PINS_CORE) scipy tqdm imagehash pytest hypothesis biopython
	.venv-py310/bin/python -m pip install -q --no-deps -e .
	touch $@

test-py310: .venv-py310/.cfgsim-installed
	.venv-py310/bin/python -m pytest -m 'not browser' --ignore=tests/test_standalone_demo.py $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/bench_ssim.py

clean:
	rm -rf $(VENV) .venv-pins .venv-py310 cfgsim-demo
