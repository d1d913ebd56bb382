"""Probe spec, presets, seeds and the spec ↔ infotext table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfgsim.errors import InputError
from cfgsim.infotext import Infotext
from cfgsim.spec import (
    DEFAULT_NEGATIVE,
    PRESETS,
    SPEC_LABELS,
    ProbeSpec,
    choose_spec,
    format_seeds,
    get_preset,
    parse_seeds,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REFERENCE_PNG = REFERENCE / "nai-925997e9-seed1337-cfg1-euler256.png"


def reference_infotext() -> str:
    if not REFERENCE_PNG.is_file():
        pytest.skip(
            f"the published reference image is not at {REFERENCE_PNG} (it lives in ../shared/reference)"
        )
    from PIL import Image

    with Image.open(REFERENCE_PNG) as im:
        return im.info["parameters"]


def test_defaults_are_the_published_ground_truth():
    spec = ProbeSpec()
    assert spec.prompt == ""
    assert spec.negative_prompt == DEFAULT_NEGATIVE
    assert (spec.sampler, spec.steps, spec.cfg_scale, spec.seeds) == ("Euler", 256, 1.0, (1337,))
    assert (spec.width, spec.height, spec.clip_skip) == (512, 512, 2)
    assert PRESETS["cfg1"] == spec


def test_prior_v2_preset():
    spec = get_preset("prior-v2")
    assert spec.prompt == "" and spec.negative_prompt == ""
    assert (spec.sampler, spec.steps, spec.cfg_scale) == ("DDIM", 1000, 1.0)
    assert spec.seeds == tuple(range(1, 21))


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(InputError, match="cfg1, prior-v2"):
        get_preset("cfg2")


def test_reference_image_parses_to_exactly_the_ground_truth():
    info = Infotext.parse(reference_infotext())
    assert info.prompt == ""
    assert info.negative_prompt == DEFAULT_NEGATIVE
    assert info.params == {
        "Steps": "256",
        "Sampler": "Euler",
        "CFG scale": "1",
        "Seed": "1337",
        "Size": "512x512",
        "Model hash": "925997e9",
        "Clip skip": "2",
    }
    # The model hash describes that one image, not the probe: the spec is exactly the default.
    assert ProbeSpec.from_infotext(info) == ProbeSpec()


def test_default_spec_writes_the_reference_infotext_without_the_model_hash():
    expected = reference_infotext().replace(", Model hash: 925997e9", "")
    assert str(ProbeSpec().to_infotext()) == expected


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("1337", (1337,)),
        (1337, (1337,)),
        ("1337, 42", (1337, 42)),
        ("1-20", tuple(range(1, 21))),
        (" 1 - 3 ,7 ", (1, 2, 3, 7)),
        ("5 5 6", (5, 6)),
        ([3, 1, 3], (3, 1)),
    ],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no seed"),
        ("abc", "is not a seed"),
        ("-1", "is not a seed"),
        ("20-1", "end is before the start"),
        ("1-5000", "more than 1000"),
        ("4294967296", "larger than"),
    ],
)
def test_bad_seeds_say_why(text, reason):
    with pytest.raises(InputError, match=reason):
        parse_seeds(text)


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30, unique=True))
def test_format_seeds_round_trips(seeds):
    assert parse_seeds(format_seeds(seeds)) == tuple(seeds)


def test_invalid_spec_values_are_named():
    with pytest.raises(InputError, match="width 500 must be a multiple of 8"):
        ProbeSpec(width=500)
    with pytest.raises(InputError, match="clip skip 0"):
        ProbeSpec(clip_skip=0)


def test_quick_preview_is_not_the_probe_and_says_so():
    spec = ProbeSpec(steps_override=16)
    assert not spec.is_probe and spec.effective_steps == 16
    info = spec.to_infotext()
    assert info.params["Steps"] == "16"
    assert info.params["Probe preview steps"] == "16 of 256"
    assert ProbeSpec.from_infotext(str(info)) == spec


def test_several_seeds_keep_the_first_in_seed_and_all_in_probe_seeds():
    spec = ProbeSpec(seeds="1-20")
    info = spec.to_infotext()
    assert info.params["Seed"] == "1"
    assert info.params["Probe seeds"] == "1-20"
    assert ProbeSpec.from_infotext(str(info)).seeds == tuple(range(1, 21))


def test_missing_clip_skip_means_the_webui_default():
    spec = ProbeSpec.from_infotext("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768")
    assert spec.clip_skip == 1
    assert (spec.sampler, spec.steps, spec.cfg_scale, spec.height) == ("Euler a", 20, 7.0, 768)


def test_unknown_keys_are_kept_and_per_image_keys_dropped():
    text = "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337, Size: 512x512, Model: anime, ENSD: 31337"
    spec = ProbeSpec.from_infotext(text)
    assert dict(spec.extra) == {"ENSD": "31337"}
    assert spec.to_infotext().params["ENSD"] == "31337"


def test_differences_list_label_and_both_values():
    diffs = ProbeSpec().differences(ProbeSpec(steps=20, sampler="Euler a"))
    assert ("Steps", "256", "20") in diffs
    assert ("Sampler", "Euler", "Euler a") in diffs
    assert len(diffs) == 2
    assert ProbeSpec().differences(ProbeSpec()) == []


def test_differences_show_the_value_in_use_where_the_webui_writes_no_pair():
    """Clip skip 1 and the "Automatic" schedule have no infotext pair; the difference still names
    the value the run uses (the box read "Clip skip 2 → (none)" while the run used 1)."""
    one = ProbeSpec.from_infotext(
        "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337, Size: 512x512, Clip skip: 1"
    )
    assert one.clip_skip == 1
    assert ProbeSpec(negative_prompt="").differences(one) == [("Clip skip", "2", "1")]
    assert ProbeSpec(scheduler="Karras").differences(ProbeSpec()) == [
        ("Schedule type", "Karras", "Automatic")
    ]


def test_choose_spec_from_a_reference_infotext():
    choice = choose_spec(
        "cfg1", "1, 2", reference_infotext="Steps: 64, Sampler: Euler, Seed: 7, Size: 512x512"
    )
    assert choice.spec.steps == 64 and choice.spec.seeds == (7,)
    assert ("Steps", "256", "64") in choice.deviations
    assert any("seed 7" in note for note in choice.notes)
    plain = choose_spec("cfg1", "1, 2", 8)
    assert plain.spec.seeds == (1, 2) and plain.spec.effective_steps == 8 and plain.deviations == []
    assert any("not the probe" in note for note in plain.notes)
    assert any("no infotext" in note for note in choose_spec("cfg1", "", reference_infotext="").notes)


def test_bad_value_in_infotext_names_key_and_value():
    with pytest.raises(InputError, match="Size: '512 by 512'"):
        ProbeSpec.from_infotext('Steps: 20, Sampler: Euler, Seed: 1, Size: "512 by 512"')


def test_label_table_covers_every_probe_field():
    covered = {field for entry in SPEC_LABELS for field in entry.fields}
    fields = set(ProbeSpec.__dataclass_fields__) - {"prompt", "negative_prompt", "extra"}
    assert fields == covered


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip)


@given(
    prompt=_text.filter(lambda s: not s.startswith("Negative prompt:")),
    negative=_text,
    steps=st.integers(1, 2000),
    cfg=st.sampled_from([1.0, 1.5, 7.0, 12.25]),
    seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5, unique=True),
    size=st.tuples(st.integers(8, 256), st.integers(8, 256)),
    clip_skip=st.integers(1, 12),
    sampler=st.sampled_from(["Euler", "DDIM", "DPM++ 2M", "Euler a"]),
    scheduler=st.sampled_from(["Automatic", "Karras"]),
    preview=st.one_of(st.none(), st.integers(1, 100)),
)
def test_spec_infotext_round_trip(
    prompt, negative, steps, cfg, seeds, size, clip_skip, sampler, scheduler, preview
):
    spec = ProbeSpec(
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        cfg_scale=cfg,
        seeds=tuple(seeds),
        width=size[0] * 8,
        height=size[1] * 8,
        clip_skip=clip_skip,
        sampler=sampler,
        scheduler=scheduler,
        steps_override=preview,
    )
    if spec.steps_override == spec.steps:
        spec = spec.replace(steps_override=None)
    assert ProbeSpec.from_infotext(str(spec.to_infotext())) == spec
