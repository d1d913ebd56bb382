"""The WebUI's ``parameters`` text ("infotext"): parse and write.

Layout, as ``create_infotext`` writes it and ``parse_generation_parameters`` reads it::

    <prompt, any number of lines; absent when the prompt is empty>
    Negative prompt: <negative, may continue on further lines; absent when empty>
    Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337, Size: 512x512, Clip skip: 2

The last line holds ``Key: value`` pairs separated by commas; a value holding a comma, a colon or a
newline is written as a JSON string (double quotes, backslash escapes). Unknown keys are kept in
order so that a parse/write round trip loses nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

NEGATIVE_PREFIX = "Negative prompt:"

# One `Key: value` pair of the parameters line, as the WebUI's ``parse_generation_parameters``
# (modules/infotext_utils.py, A1111 1.8-1.10 and Forge) reads it: a key starts with a word
# character and has at least two characters of words, spaces, dashes and slashes ("Clip skip",
# "NGMS/s_min_uncond"); a value is a non-empty JSON-style quoted string or runs to the next comma.
# The WebUI finds the pairs with ``findall``, so stray text between pairs is skipped, not fatal.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# The WebUI takes the last line as parameters when it holds at least this many pairs.
_MIN_PAIRS = 3


def quote(value: object) -> str:
    """Format one value for the parameters line, quoting it when it would break the line."""
    text = format_value(value)
    # The WebUI quotes on comma, colon and newline; a double quote is quoted too, or a value such
    # as `"0` would start a quoted string on the way back.
    # An empty value is written as "" too: the WebUI drops a pair whose value is empty.
    if not text or any(ch in text for ch in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """A value as the WebUI reads it: a JSON string when quoted (kept as written if it does not
    decode), stripped of surrounding spaces."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return str(json.loads(text))
        except json.JSONDecodeError:
            return text
    return text


def format_value(value: object) -> str:
    """Numbers the way the WebUI's infotext shows them: ``1`` for a whole float, ``7.5`` otherwise."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _parse_pairs(line: str) -> list[tuple[str, str]]:
    """The ``Key: value`` pairs of a parameters line, found the way the WebUI finds them: every
    match of the pair pattern, text between them skipped; a pair with an empty value is dropped
    (the WebUI's parser fails on it and goes on without it)."""
    pairs = []
    for key, value in _PAIR.findall(line):
        if value:
            pairs.append((key.strip(), unquote(value)))
    return pairs


@dataclass
class Infotext:
    """A parsed infotext: prompt, negative prompt and the ordered ``Key: value`` parameters."""

    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Infotext:
        lines = text.strip("\n").split("\n") if text.strip() else []
        params: dict[str, str] = {}
        # The WebUI takes the last line as the parameters line when the pattern matches it at least
        # three times; fewer and it is still prompt text ("a cat: cute" must not become a parameter).
        if lines and len(_PAIR.findall(lines[-1])) >= _MIN_PAIRS:
            params = dict(_parse_pairs(lines[-1]))
            lines = lines[:-1]
        prompt_lines: list[str] = []
        negative_lines: list[str] = []
        in_negative = False
        for line in lines:
            if not in_negative and line.startswith(NEGATIVE_PREFIX):
                in_negative = True
                negative_lines.append(line[len(NEGATIVE_PREFIX) :].lstrip(" "))
            else:
                (negative_lines if in_negative else prompt_lines).append(line)
        return cls("\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), params)

    def format(self) -> str:
        out = []
        if self.prompt:
            out.append(self.prompt)
        if self.negative_prompt:
            out.append(f"{NEGATIVE_PREFIX} {self.negative_prompt}")
        if self.params:
            out.append(", ".join(f"{key}: {quote(value)}" for key, value in self.params.items()))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format()
