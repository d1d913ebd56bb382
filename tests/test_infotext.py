"""Parsing and writing the WebUI's infotext."""

from __future__ import annotations

from hypothesis import given
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
