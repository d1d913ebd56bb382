"""The CLIP tokenizer files (``vocab.json``, ``merges.txt``) built offline from open_clip's BPE list.

SD 1.x uses OpenAI CLIP's byte-level BPE tokenizer. open_clip ships its merge list
(``bpe_simple_vocab_16e6.txt.gz``), and the Hugging Face ``CLIPTokenizer`` files are derived from it
deterministically, so the demo needs no download:

* the first line of the list is a header; the next 49152 - 256 - 2 lines are the merges used;
* the vocabulary is the 256 byte symbols (GPT-2's printable byte-to-unicode table), the same 256
  with the end-of-word marker ``</w>``, one entry per merge (the concatenated pair), and finally
  ``<|startoftext|>`` and ``<|endoftext|>`` — 49408 entries, ids in that order.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from cfgsim.errors import InputError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
_N_MERGES = 49152 - 256 - 2


def bpe_path() -> Path:
    """open_clip's bundled merge list (open_clip is a dependency of the standalone extra)."""
    try:
        import open_clip
    except ImportError as exc:
        raise InputError(
            "the CLIP tokenizer is built from open_clip's vocabulary: pip install open-clip-torch"
        ) from exc
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise InputError(f"open_clip has no {path.name} (looked in {path.parent})")
    return path


def byte_symbols() -> list[str]:
    """GPT-2's byte → printable character table, in vocabulary order (printable bytes first)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    return [symbols[b] for b in order]


def clip_vocabulary(
    bpe_file: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab {token: id}, merges) of the CLIP tokenizer (see module doc)."""
    with gzip.open(bpe_file or bpe_path(), "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _N_MERGES]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError("unexpected BPE merge list (not open_clip's bpe_simple_vocab_16e6)")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def write_clip_tokenizer(
    folder: str | os.PathLike[str], bpe_file: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs that ``CLIPTokenizer`` reads."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary(bpe_file)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
