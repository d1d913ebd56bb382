"""Where the standalone runner gets model configurations and the tokenizer: never from the network.

A single-file checkpoint holds weights only; the shapes of the networks, the CLIP tokenizer and the
noise schedule come from a diffusers-layout folder::

    model_index.json            (optional)
    unet/config.json
    vae/config.json
    text_encoder/config.json
    tokenizer/vocab.json + merges.txt   (or tokenizer.json)
    scheduler/scheduler_config.json     (optional: SD 1.x's schedule when absent)

given with ``--config-dir``, else found beside the checkpoints (a complete ``config/`` folder in their
folder or one up: the layout ``cfgsim demo`` writes, ``models/`` and ``config/`` side by side), else
in the Hugging Face cache (a previously downloaded
``stable-diffusion-v1-5`` is enough; its weights are not needed). Nothing is downloaded: a missing
folder is an :class:`~cfgsim.errors.InputError` that says what to provide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfgsim.errors import InputError
from cfgsim.standalone.schedule import SD1_BETA_END, SD1_BETA_START, SD1_TRAIN_TIMESTEPS

# Hugging Face repositories whose cached configuration fits every SD 1.x checkpoint, in order.
SD1_CONFIG_REPOS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-v1-5",
    "CompVis/stable-diffusion-v1-4",
)
REQUIRED_FILES = ("unet/config.json", "vae/config.json", "text_encoder/config.json")
TOKENIZER_FILE_SETS = (("tokenizer/vocab.json", "tokenizer/merges.txt"), ("tokenizer/tokenizer.json",))

HOW_TO_PROVIDE = (
    "pass --config-dir DIR, a diffusers-layout folder with unet/, vae/, text_encoder/ and tokenizer/ "
    "configuration files (weights are not needed; `cfgsim demo` writes one for its tiny models), or "
    "put the configuration of stable-diffusion-v1-5 into the Hugging Face cache, e.g. "
    "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --include '*.json' '*.txt'`"
)


@dataclass
class ModelConfig:
    """A resolved configuration folder: the three model configs, the tokenizer folder, the schedule."""

    root: Path
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder_dir: Path
    tokenizer_dir: Path
    scheduler: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def beta_start(self) -> float:
        return float(self.scheduler.get("beta_start", SD1_BETA_START))

    @property
    def beta_end(self) -> float:
        return float(self.scheduler.get("beta_end", SD1_BETA_END))

    @property
    def beta_schedule(self) -> str:
        return str(self.scheduler.get("beta_schedule", "scaled_linear"))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.get("num_train_timesteps", SD1_TRAIN_TIMESTEPS))

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.get("prediction_type", "epsilon"))

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.get("scaling_factor", 0.18215))


def missing_files(root: Path) -> list[str]:
    """The required configuration files (see module doc) that ``root`` lacks."""
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if not any(all((root / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        missing.append("tokenizer/vocab.json + tokenizer/merges.txt (or tokenizer/tokenizer.json)")
    return missing


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data


def load_config_dir(root: str | os.PathLike[str], *, source: str = "") -> ModelConfig:
    """Read a diffusers-layout configuration folder; an :class:`InputError` names what is missing."""
    path = Path(root)
    if not path.is_dir():
        raise InputError(f"--config-dir {path}: no such folder; {HOW_TO_PROVIDE}")
    missing = missing_files(path)
    if missing:
        raise InputError(f"config folder {path} lacks {', '.join(missing)}; {HOW_TO_PROVIDE}")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    config = ModelConfig(
        root=path,
        unet=_read_json(path / "unet" / "config.json"),
        vae=_read_json(path / "vae" / "config.json"),
        text_encoder_dir=path / "text_encoder",
        tokenizer_dir=path / "tokenizer",
        scheduler=_read_json(scheduler_file) if scheduler_file.is_file() else {},
        source=source or str(path),
    )
    if config.prediction_type != "epsilon":
        raise InputError(
            f"config folder {path}: prediction type {config.prediction_type!r}; the SD 1.x probe needs an "
            "epsilon-prediction model"
        )
    return config


def find_cached_config(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """A cached SD 1.x configuration folder (see ``SD1_CONFIG_REPOS``), looked up without network.

    ``cache_dir`` is the hub cache (default: huggingface_hub's, i.e. ``HF_HUB_CACHE`` / ``HF_HOME``).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    for repo in SD1_CONFIG_REPOS:
        try:
            folder = snapshot_download(
                repo,
                local_files_only=True,
                allow_patterns=["*.json", "*.txt"],
                repo_type="model",
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        except Exception:  # not cached (LocalEntryNotFoundError and relatives): try the next one
            continue
        if folder and not missing_files(Path(folder)):
            return Path(folder)
    return None


def find_config_beside(checkpoints: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The configuration folder that travels with ``checkpoints``, or None.

    For each checkpoint, ``config/`` in its folder or in the folder above (``cfgsim demo`` writes
    ``models/`` and ``config/`` side by side); only a complete folder (see :func:`missing_files`)
    counts. Every checkpoint must lead to the same folder: one configuration serves a whole run.
    """
    found: set[Path] = set()
    for checkpoint in checkpoints:
        folder = Path(checkpoint).resolve().parent
        candidates = [c for c in (folder / "config", folder.parent / "config") if c.is_dir()]
        complete = next((c for c in candidates if not missing_files(c)), None)
        if complete is None:
            return None
        found.add(complete)
    return found.pop() if len(found) == 1 else None


def resolve_config(
    config_dir: str | os.PathLike[str] | None, *, cache_dir: str | os.PathLike[str] | None = None
) -> ModelConfig:
    """``config_dir`` when given, else the Hugging Face cache; an :class:`InputError` when neither has it."""
    if config_dir is not None:
        return load_config_dir(config_dir)
    cached = find_cached_config(cache_dir)
    if cached is None:
        raise InputError(
            "no SD 1.x model configuration available offline (the checkpoints hold weights only); "
            + HOW_TO_PROVIDE
        )
    return load_config_dir(cached, source=f"Hugging Face cache: {cached}")
