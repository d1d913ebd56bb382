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

# One `Key: value` pair of the parameters line. Keys start with a word character and may contain
# spaces, dashes and slashes ("Clip skip", "Hires upscale", "NGMS/s_min_uncond"); a value is a
# JSON-style quoted string or runs to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/\.]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def quote(value: object) -> str:
    """Format one value for the parameters line, quoting it when it would break the line."""
    text = format_value(value)
    # The WebUI quotes on comma, colon and newline; a double quote is quoted too, or a value such
    # as `"0` would start a quoted string on the way back.
    if any(ch in text for ch in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
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


def _parse_pairs(line: str) -> list[tuple[str, str]] | None:
    """The pairs of a parameters line, or None when the line is not one (then it is prompt text)."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    line = line.strip()
    while pos < len(line):
        match = _PAIR.match(line, pos)
        if match is None or match.end() == pos:
            return None
        pairs.append((match.group(1).strip(), unquote(match.group(2))))
        pos = match.end()
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
        # The WebUI takes the last line as the parameters line when it has at least three pairs;
        # fewer and it is still prompt text ("a cat: cute" must not become a parameter).
        if lines:
            pairs = _parse_pairs(lines[-1])
            if pairs is not None and len(pairs) >= 3:
                params = dict(pairs)
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
