"""Parsing and writing the WebUI's infotext."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgsim.infotext import Infotext, format_value, quote


def test_prompt_negative_and_params():
    info = Infotext.parse(
        "a cat\non a mat\nNegative prompt: ugly\nblurry\nSteps: 20, Sampler: Euler a, CFG scale: 7"
    )
    assert info.prompt == "a cat\non a mat"
    assert info.negative_prompt == "ugly\nblurry"
    assert info.params == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7"}


def test_empty_prompt_starts_with_the_negative_line():
    info = Infotext.parse("Negative prompt: x\nSteps: 1, Sampler: Euler, Seed: 3")
    assert info.prompt == "" and info.negative_prompt == "x"
    assert info.format() == "Negative prompt: x\nSteps: 1, Sampler: Euler, Seed: 3"


def test_quoted_values_may_hold_commas_colons_and_quotes():
    info = Infotext(params={"Steps": "1", "Compared": 'a, b: "c"', "Seed": "2"})
    text = info.format()
    assert 'Compared: "a, b: \\"c\\""' in text
    assert Infotext.parse(text).params["Compared"] == 'a, b: "c"'


def test_a_prompt_line_with_colons_is_not_taken_for_parameters():
    info = Infotext.parse("style: anime, mood: calm")
    assert info.prompt == "style: anime, mood: calm" and info.params == {}


def test_empty_text():
    assert Infotext.parse("") == Infotext()


def test_numbers_look_like_the_webui_writes_them():
    assert format_value(1.0) == "1"
    assert format_value(7.5) == "7.5"
    assert quote("plain") == "plain"
    assert quote("a,b") == '"a,b"'


_key = st.from_regex(r"[A-Za-z][A-Za-z0-9 ]{0,12}[A-Za-z0-9]", fullmatch=True).filter(lambda k: "  " not in k)
_value = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)


@given(st.dictionaries(_key, _value, min_size=3, max_size=8))
def test_params_round_trip(params):
    info = Infotext(prompt="", negative_prompt="", params=params)
    assert Infotext.parse(info.format()).params == params


# The WebUI's own reading of the parameters line, written here from its definition in
# modules/infotext_utils.py (A1111 1.8-1.10, Forge): ``re_param.findall(lastline)`` over this
# pattern, the line taken as parameters with at least three matches, a quoted value JSON-decoded,
# a pair whose value is empty skipped (``v[0]`` raises and the loop goes on).
_WEBUI_PARAM = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'


def webui_params(lastline: str) -> dict[str, str] | None:
    import contextlib
    import json
    import re

    found = re.findall(_WEBUI_PARAM, lastline)
    if len(found) < 3:
        return None
    out = {}
    for key, raw in found:
        if not raw:
            continue
        value = raw
        if raw[0] == '"' and raw[-1] == '"':
            with contextlib.suppress(ValueError):
                value = json.loads(raw)
        out[key.strip()] = value.strip()
    return out


@pytest.mark.parametrize(
    "line",
    [
        "Steps: 20, Sampler: Euler, garbage, CFG scale: 7, Seed: 1",  # stray text between pairs
        "Steps: 20, Sampler: Euler a, CFG scale: 7 (from a copy), Seed: 5, Size: 512x512",
        'Steps: 20, , , Sampler: "Euler", Model: a:b, Seed: 3',
        "Steps: 20, Sampler: Euler, Lora hashes: , Seed: 7",  # an empty value is dropped
        "junk Steps: 20, Sampler: Euler, Seed: 1",  # the WebUI reads the key "junk Steps"
        "Steps: 20, Sampler: Euler, Seed: 1, trailing words",
        "x: 1, Steps: 20, Sampler: Euler, Seed: 1",  # one-letter keys are no keys
    ],
)
def test_parameters_line_is_read_as_the_webui_reads_it(line):
    info = Infotext.parse(f"a prompt\n{line}")
    expected = webui_params(line)
    assert expected is not None and info.params == expected
    assert info.prompt == "a prompt"


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(["Steps: 20", "Seed: 1", "Size: 64x64", '"q, r"', " junk ", ",", ":", "A b: c"]),
        max_size=10,
    )
)
def test_parameters_line_property_matches_the_webui(parts):
    line = ", ".join(parts)
    expected = webui_params(line)
    info = Infotext.parse(f"p\n{line}")
    if expected is None:
        assert info.params == {}
    else:
        assert info.params == expected


def test_empty_values_round_trip_as_empty_strings():
    info = Infotext(params={"Steps": "20", "Lora hashes": "", "Seed": "1"})
    assert 'Lora hashes: ""' in info.format()
    assert Infotext.parse(info.format()).params == info.params
    assert webui_params(info.format()) == info.params
