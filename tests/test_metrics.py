"""Tests for cfgsim.metrics: the registry, the shared contract, and each metric.

SSIM is held to scikit-image (``structural_similarity(a, b, channel_axis=2, data_range=255)``)
within 1e-4 on random images and on the published probe reference image with perturbed copies.
CLIP runs with a tiny randomly initialised open_clip model built here (no download); it is skipped
with a reason when torch or open_clip is not installed.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFilter
from scipy import ndimage
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from cfgsim.errors import CfgsimError, InputError, ModelLoadError
from cfgsim.metrics import METRICS, ClipMetric, Metric, SsimMetric, available_metrics, get_metric
from cfgsim.metrics.phash import PhashMetric, phash, phash_hex
from cfgsim.metrics.pixel import PSNR_CEILING_DB, PsnrMetric, RmseMetric, psnr, rmse
from cfgsim.metrics.ssim import ssim

# The published probe ground truth lives outside the project, in shared/ beside the repository.
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REFERENCE /= "nai-925997e9-seed1337-cfg1-euler256.png"
SKIMAGE_TOLERANCE = 1e-4


def smooth_image(seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Image-like random content: smooth blobs at two scales plus pixel noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    field = np.zeros((height, width, 3))
    for sigma, weight in ((max(height, width) / 8, 1.0), (max(height, width) / 32, 0.4)):
        field += weight * ndimage.gaussian_filter(rng.normal(size=(height, width, 3)), (sigma, sigma, 0))
    field -= field.min()
    field *= 220.0 / max(float(field.max()), 1e-9)
    field += rng.normal(0.0, 6.0, field.shape) + 15.0
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def jpeg_copy(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def perturbed_copies(arr: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "noise": np.clip(arr + rng.normal(0.0, 12.0, arr.shape), 0, 255).astype(np.uint8),
        "blur": np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(2))),
        "shift": np.roll(arr, (3, 5), axis=(0, 1)),
        "jpeg": jpeg_copy(arr, 60),
    }


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    if not REFERENCE.is_file():
        pytest.skip(f"reference probe image not found at {REFERENCE} (kept outside the project in shared/)")
    from cfgsim.imageio import load_image, to_array

    return to_array(load_image(REFERENCE))


# --- tiny CLIP model (tests only) ----------------------------------------------------------------

TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def tiny_clip():
    """A randomly initialised (seeded) open_clip CLIP small enough to run in milliseconds."""
    torch = pytest.importorskip("torch", reason="the clip metric needs torch")
    open_clip = pytest.importorskip("open_clip", reason="the clip metric needs open-clip-torch")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=TINY_CLIP_CONFIG["embed_dim"],
        vision_cfg=dict(TINY_CLIP_CONFIG["vision_cfg"]),
        text_cfg=dict(TINY_CLIP_CONFIG["text_cfg"]),
    )
    return model, open_clip.transform.image_transform(32, is_train=False)


def make_metric(name: str) -> Metric:
    if name == "clip":
        model, preprocess = tiny_clip()
        return ClipMetric(model_obj=model, preprocess=preprocess, device="cpu")
    return get_metric(name)


# --- registry ------------------------------------------------------------------------------------


def test_registry_lists_all_metrics() -> None:
    assert available_metrics() == ["ssim", "clip", "phash", "psnr", "rmse"]
    assert set(METRICS) == set(available_metrics())
    for name, cls in METRICS.items():
        assert cls.name == name
        assert cls.label and cls.description
        assert "identical" in cls.description  # every description states what 1.0 means


def test_get_metric_returns_configured_objects() -> None:
    assert isinstance(get_metric("ssim"), SsimMetric)
    assert isinstance(get_metric(" SSIM "), SsimMetric)
    assert get_metric("phash", hash_size=16).hash_size == 16
    clip = get_metric("clip", model="ViT-B-16", pretrained="/some/file.bin")
    assert clip.settings() == {"model": "ViT-B-16", "pretrained": "/some/file.bin"}


def test_get_metric_unknown_name_lists_known_names() -> None:
    with pytest.raises(InputError, match="'lpips' is unknown") as info:
        get_metric("lpips")
    for name in METRICS:
        assert name in str(info.value)


def test_get_metric_unknown_and_bad_options() -> None:
    with pytest.raises(InputError, match=r"unknown option\(s\) radius \(accepted: win_size, workers\)"):
        get_metric("ssim", radius=3)
    with pytest.raises(InputError, match="win_size"):
        get_metric("ssim", win_size=4)
    with pytest.raises(InputError, match="batch_size"):
        get_metric("clip", batch_size=0)


def test_importing_metrics_loads_no_torch() -> None:
    code = "import sys, cfgsim.metrics; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- the shared contract -------------------------------------------------------------------------

ALL_METRICS = ["ssim", "phash", "psnr", "rmse", "clip"]


@pytest.mark.parametrize("name", ALL_METRICS)
def test_matrix_contract(name: str) -> None:
    metric = make_metric(name)
    images = [smooth_image(seed) for seed in range(5)]
    images.append(images[0].copy())
    prepared = metric.prepare(images)
    assert len(prepared) == len(images)
    matrix = metric.matrix(prepared)
    assert matrix.shape == (6, 6) and matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(np.diag(matrix), np.ones(6))
    assert np.all(matrix <= 1.0) and np.all(matrix >= -1.0)
    assert matrix[0, 5] == pytest.approx(1.0, abs=1e-6)  # a copy is identical
    for i in range(6):
        for j in range(6):
            if i != j:
                assert matrix[i, j] == pytest.approx(metric.score(prepared[i], prepared[j]), abs=1e-9)
    # Deterministic: preparing again gives the same matrix.
    np.testing.assert_array_equal(metric.matrix(metric.prepare(images)), matrix)
    np.testing.assert_array_equal(metric.compare(images), matrix)


@pytest.mark.parametrize("name", ALL_METRICS)
def test_score_is_symmetric_and_self_similarity_is_one(name: str) -> None:
    metric = make_metric(name)
    a, b = metric.prepare([smooth_image(1), smooth_image(2)])
    assert metric.score(a, b) == pytest.approx(metric.score(b, a), abs=1e-12)
    assert metric.score(a, a) == pytest.approx(1.0, abs=1e-6)
    assert metric.score(a, b) < 1.0


@pytest.mark.parametrize("name", ALL_METRICS)
def test_matrix_of_one_and_none(name: str) -> None:
    metric = make_metric(name)
    np.testing.assert_array_equal(metric.matrix(metric.prepare([smooth_image(0)])), [[1.0]])
    assert metric.matrix([]).shape == (0, 0)


@pytest.mark.parametrize("name", ALL_METRICS)
def test_prepare_accepts_pil_images(name: str) -> None:
    metric = make_metric(name)
    arr = smooth_image(3)
    from_pil = metric.prepare([Image.fromarray(arr).convert("RGBA")])[0]
    from_arr = metric.prepare([arr])[0]
    assert metric.score(from_pil, from_arr) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["ssim", "psnr", "rmse"])
def test_pixel_aligned_metrics_need_one_size(name: str) -> None:
    metric = make_metric(name)
    assert metric.same_size
    with pytest.raises(InputError, match="common_size") as info:
        metric.prepare([smooth_image(0, 64, 64), smooth_image(1, 48, 64)])
    assert "64x64" in str(info.value) and "64x48" in str(info.value)


@pytest.mark.parametrize("name", ["phash", "clip"])
def test_size_free_metrics_take_any_sizes(name: str) -> None:
    metric = make_metric(name)
    assert not metric.same_size
    prepared = metric.prepare([smooth_image(0, 64, 64), smooth_image(0, 40, 56)])
    assert metric.matrix(prepared).shape == (2, 2)


@pytest.mark.parametrize("name", ALL_METRICS)
def test_prepare_rejects_non_images(name: str) -> None:
    metric = make_metric(name)
    with pytest.raises(InputError, match="image #1"):
        metric.prepare([smooth_image(0), np.zeros((64, 64, 3), dtype=np.float64)])


# --- SSIM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(7, 7), (16, 16), (37, 53), (64, 64), (100, 31)])
def test_ssim_matches_skimage_on_random_images(height: int, width: int) -> None:
    metric = SsimMetric()
    for seed in range(3):
        a, b = smooth_image(seed, height, width), smooth_image(seed + 10, height, width)
        prepared = metric.prepare([a, b])
        assert metric.score(*prepared) == pytest.approx(sk_ssim(a, b), abs=SKIMAGE_TOLERANCE)
        assert ssim(a, b, channel_axis=2) == pytest.approx(sk_ssim(a, b), abs=SKIMAGE_TOLERANCE)


def test_ssim_matches_skimage_on_white_noise() -> None:
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(2))
    metric = SsimMetric()
    assert metric.score(*metric.prepare([a, b])) == pytest.approx(sk_ssim(a, b), abs=SKIMAGE_TOLERANCE)


def test_ssim_matches_skimage_on_extremes() -> None:
    """Black, white and black/white stripes: every window sum at its bound (products of ±128)."""
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    white = np.full((32, 32, 3), 255, dtype=np.uint8)
    stripes = np.zeros((32, 32, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    images = [black, white, stripes, 255 - stripes]
    matrix = SsimMetric().compare(images)
    for i, a in enumerate(images):
        for j, b in enumerate(images):
            assert matrix[i, j] == pytest.approx(sk_ssim(a, b), abs=SKIMAGE_TOLERANCE)


def test_ssim_matrix_matches_skimage_on_every_pair() -> None:
    images = [smooth_image(seed, 48, 72) for seed in range(6)]
    matrix = SsimMetric().compare(images)
    for i in range(6):
        for j in range(6):
            assert matrix[i, j] == pytest.approx(sk_ssim(images[i], images[j]), abs=SKIMAGE_TOLERANCE)


def test_ssim_on_reference_and_perturbed_copies(reference: np.ndarray) -> None:
    copies = perturbed_copies(reference)
    images = [reference, *copies.values()]
    matrix = SsimMetric().compare(images)
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert matrix[i, j] == pytest.approx(sk_ssim(images[i], images[j]), abs=SKIMAGE_TOLERANCE)
    by_name = dict(zip(copies, matrix[0, 1:], strict=True))
    # A mild JPEG keeps the structure; a 3-5 px shift destroys pixel alignment.
    assert by_name["jpeg"] > by_name["blur"] > by_name["shift"]
    assert by_name["shift"] < 0.5


def test_ssim_identical_images_score_exactly_one() -> None:
    a = smooth_image(4)
    metric = SsimMetric()
    first, second = metric.prepare([a, a.copy()])
    assert metric.score(first, second) == 1.0
    assert ssim(a, a, channel_axis=2) == 1.0
    assert ssim(a[..., 0].astype(np.float64), a[..., 0].astype(np.float64), data_range=255) == 1.0


def test_ssim_pinned_values() -> None:
    """Values computed with scikit-image's structural_similarity, identical (to 1e-15) in 0.21.0
    (numpy 1.26.2) and 0.26.0 (numpy 2.4): the same images in both, built from index arithmetic."""
    y, x = np.mgrid[0:48, 0:64]
    a = np.stack([(3 * x + 5 * y) % 256, (x * y) % 256, (7 * x) % 256], axis=2).astype(np.uint8)
    b = np.roll(a, 2, axis=1)
    assert ssim(a, b, channel_axis=2) == pytest.approx(0.6145360284817207, abs=1e-6)
    assert ssim(a[..., 0], a[..., 1]) == pytest.approx(0.08744464313097403, abs=1e-6)


def test_ssim_of_inverted_image_is_negative() -> None:
    a = smooth_image(5)
    assert ssim(a, 255 - a, channel_axis=2) < -0.5
    assert ssim(a, 255 - a, channel_axis=2) == pytest.approx(sk_ssim(a, 255 - a), abs=SKIMAGE_TOLERANCE)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ssim_helper_float_images(dtype: type) -> None:
    a, b = (smooth_image(s).astype(dtype) / 255.0 for s in (6, 7))
    expected = structural_similarity(a, b, channel_axis=2, data_range=1.0)
    assert ssim(a, b, channel_axis=2, data_range=1.0) == pytest.approx(expected, abs=SKIMAGE_TOLERANCE)


def test_ssim_helper_uint16_default_range() -> None:
    a, b = (smooth_image(s).astype(np.uint16) * 257 for s in (6, 7))
    expected = structural_similarity(a, b, channel_axis=2, data_range=65535)
    assert ssim(a, b, channel_axis=2) == pytest.approx(expected, abs=SKIMAGE_TOLERANCE)


@pytest.mark.parametrize(
    "options",
    [{"win_size": 3}, {"win_size": 11}, {"K1": 0.05, "K2": 0.1}, {"use_sample_covariance": False}],
)
def test_ssim_helper_options_match_skimage(options: dict) -> None:
    a, b = smooth_image(8, 40, 50)[..., 0], smooth_image(9, 40, 50)[..., 0]
    expected = structural_similarity(a, b, data_range=255, **options)
    assert ssim(a, b, **options) == pytest.approx(expected, abs=SKIMAGE_TOLERANCE)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_ssim_full_map_matches_skimage(dtype: type) -> None:
    a, b = smooth_image(10, 30, 41).astype(dtype), smooth_image(11, 30, 41).astype(dtype)
    expected, expected_map = structural_similarity(a, b, channel_axis=2, data_range=255, full=True)
    value, smap = ssim(a, b, channel_axis=2, data_range=255, full=True)
    assert smap.shape == a.shape
    np.testing.assert_allclose(smap, expected_map, atol=SKIMAGE_TOLERANCE)
    assert value == pytest.approx(expected, abs=SKIMAGE_TOLERANCE)
    _, grey_map = ssim(a[..., 0], b[..., 0], data_range=255, full=True)
    assert grey_map.shape == a.shape[:2]
    np.testing.assert_allclose(grey_map, expected_map[..., 0], atol=SKIMAGE_TOLERANCE)


def test_ssim_channel_axis_position_does_not_matter() -> None:
    a, b = smooth_image(12), smooth_image(13)
    last = ssim(a, b, channel_axis=2)
    assert ssim(np.moveaxis(a, 2, 0), np.moveaxis(b, 2, 0), channel_axis=0) == pytest.approx(last, abs=1e-7)
    assert ssim(a, b, channel_axis=-1) == pytest.approx(last, abs=1e-7)


def test_ssim_invariances() -> None:
    """The window is symmetric and channels are averaged: transposing, flipping or permuting the
    channels of both images leaves SSIM unchanged."""
    a, b = smooth_image(14, 40, 56), smooth_image(15, 40, 56)
    base = ssim(a, b, channel_axis=2)
    for transform in (
        lambda x: np.ascontiguousarray(x.transpose(1, 0, 2)),
        lambda x: x[::-1].copy(),
        lambda x: x[:, ::-1].copy(),
        lambda x: x[..., [2, 0, 1]].copy(),
    ):
        assert ssim(transform(a), transform(b), channel_axis=2) == pytest.approx(base, abs=1e-6)


def test_ssim_threads_do_not_change_results() -> None:
    images = [smooth_image(seed, 40, 40) for seed in range(7)]
    single = SsimMetric(workers=1)
    threaded = SsimMetric(workers=3)
    np.testing.assert_array_equal(single.compare(images), threaded.compare(images))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.zeros((8, 8)), np.zeros((8, 9))), {}, "same shape"),
        ((np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)), {}, "channel_axis"),
        ((np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)), {"channel_axis": 2}, "3-D"),
        ((np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)), {"win_size": 4}, "odd"),
        ((np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)), {"win_size": 9}, "exceeds"),
        ((np.zeros((8, 8)), np.zeros((8, 8))), {}, "data_range"),
        ((np.zeros((8, 8)), np.zeros((8, 8))), {"data_range": 0}, "positive"),
        ((np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)), {"K1": -1}, "non-negative"),
    ],
)
def test_ssim_helper_errors(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ssim(*args, **kwargs)


def test_ssim_metric_errors() -> None:
    with pytest.raises(InputError, match="smaller than the 7x7 window"):
        SsimMetric().prepare([np.zeros((6, 20, 3), np.uint8)])
    with pytest.raises(InputError, match="workers"):
        SsimMetric(workers=0)
    small = SsimMetric().prepare([smooth_image(0, 16, 16)])[0]
    large = SsimMetric().prepare([smooth_image(0)])[0]
    with pytest.raises(InputError, match="cannot compare"):
        SsimMetric().score(small, large)
    with pytest.raises(InputError, match="cannot compare"):
        SsimMetric().matrix([small, large])
    other_window = SsimMetric(win_size=5).prepare([smooth_image(0, 16, 16)])[0]
    with pytest.raises(InputError, match="different options"):
        SsimMetric().score(small, other_window)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(7, 20), st.integers(7, 20), st.just(3))),
    st.integers(0, 2**32 - 1),
)
def test_ssim_property_matches_skimage(a: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    metric = SsimMetric(workers=1)
    pa, pb = metric.prepare([a, b])
    value = metric.score(pa, pb)
    assert -1.0 <= value <= 1.0
    assert value == metric.score(pb, pa)
    assert value == pytest.approx(sk_ssim(a, b), abs=SKIMAGE_TOLERANCE)


# --- pHash ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_size", [4, 8, 16])
def test_phash_length(hash_size: int) -> None:
    bits = phash(smooth_image(0), hash_size=hash_size)
    assert bits.dtype == bool and bits.shape == (hash_size * hash_size,)
    assert len(phash_hex(bits)) == hash_size * hash_size // 4


def _index_images() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:48, 0:64]
    a = np.stack([(3 * x + 5 * y) % 256, (x * y) % 256, (7 * x) % 256], axis=2).astype(np.uint8)
    gradient = np.stack([x * 4, y * 5, (x + y) * 2], axis=2).astype(np.uint8)
    return a, gradient


@pytest.mark.parametrize(
    ("hash_size", "expected"),
    [(8, ("80073f6f1e703c79", "aa11e4566217f65b")), (5, ("1019dab", "116745a"))],
)
def test_phash_pinned_values(hash_size: int, expected: tuple[str, str]) -> None:
    """``str(imagehash.phash(Image.fromarray(img), hash_size))`` from ImageHash 4.3.2, identical
    under Pillow 9.5.0/numpy 1.26.2/scipy 1.13.1 and Pillow 13.0.0/numpy 2.4/scipy 1.17.1, for
    images built from index arithmetic."""
    for image, value in zip(_index_images(), expected, strict=True):
        assert phash_hex(phash(image, hash_size=hash_size)) == value


@pytest.mark.parametrize("hash_size", [2, 6, 8, 12])
def test_phash_is_imagehash_phash(hash_size: int) -> None:
    """The same bits and the same hexadecimal text as the ImageHash library, PIL or array input."""
    imagehash = pytest.importorskip("imagehash")
    for seed in range(4):
        arr = smooth_image(seed, 40 + seed * 13, 64)
        reference = imagehash.phash(Image.fromarray(arr), hash_size=hash_size)
        bits = phash(arr, hash_size=hash_size)
        np.testing.assert_array_equal(bits, reference.hash.reshape(-1))
        np.testing.assert_array_equal(phash(Image.fromarray(arr).convert("RGBA"), hash_size=hash_size), bits)
        assert phash_hex(bits) == str(reference)
    a, b = (PhashMetric(hash_size=hash_size).prepare([smooth_image(s)])[0] for s in (1, 2))
    ha, hb = (imagehash.phash(Image.fromarray(smooth_image(s)), hash_size=hash_size) for s in (1, 2))
    assert PhashMetric(hash_size=hash_size).score(a, b) == 1.0 - (ha - hb) / hash_size**2


def _phash_score(a: np.ndarray, b: np.ndarray) -> float:
    metric = PhashMetric()
    return metric.score(*metric.prepare([a, b]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phash_is_robust_to_downscaling_and_jpeg(seed: int) -> None:
    big = smooth_image(seed, 512, 512)
    half = np.asarray(Image.fromarray(big).resize((256, 256), Image.Resampling.LANCZOS))
    assert _phash_score(big, half) >= 0.9
    assert _phash_score(big, jpeg_copy(big, 60)) >= 0.9
    assert _phash_score(big, jpeg_copy(half, 60)) >= 0.9


def test_phash_reference_robustness(reference: np.ndarray) -> None:
    half = np.asarray(Image.fromarray(reference).resize((256, 256), Image.Resampling.LANCZOS))
    assert _phash_score(reference, half) >= 0.9
    assert _phash_score(reference, jpeg_copy(reference, 60)) >= 0.9


def test_phash_unrelated_images_score_much_lower() -> None:
    images = [smooth_image(seed, 128, 128) for seed in range(12)]
    matrix = PhashMetric().compare(images)
    unrelated = matrix[np.triu_indices(12, k=1)]
    assert 0.35 <= unrelated.mean() <= 0.65  # chance level is 0.5
    assert unrelated.max() < 0.9


def test_phash_ignores_brightness_and_contrast() -> None:
    """The threshold is the median of the block: an affine brightness change (without clipping)
    scales every AC coefficient alike and keeps the hash."""
    a = (smooth_image(3).astype(np.float64) * 0.6 + 20).astype(np.uint8)
    brighter = (a.astype(np.float64) * 1.3 + 30).astype(np.uint8)
    assert _phash_score(a, brighter) >= 0.95


def test_phash_errors() -> None:
    with pytest.raises(InputError, match="hash_size"):
        PhashMetric(hash_size=1)
    with pytest.raises(ValueError, match="hash_size"):
        phash(smooth_image(0), hash_size=0)
    short = PhashMetric(hash_size=4).prepare([smooth_image(0)])[0]
    long = PhashMetric().prepare([smooth_image(0)])[0]
    with pytest.raises(InputError, match="different lengths"):
        PhashMetric().score(short, long)


# --- PSNR / RMSE ---------------------------------------------------------------------------------


def test_pixel_helpers_match_skimage() -> None:
    a, b = smooth_image(20), smooth_image(21)
    assert rmse(a, b) == pytest.approx(np.sqrt(mean_squared_error(a, b)), rel=1e-12)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(
        peak_signal_noise_ratio(a / 255.0, b / 255.0, data_range=1.0), rel=1e-9
    )


def test_pixel_pinned_values() -> None:
    """Closed forms: black vs white is RMSE 255 and PSNR 0 dB; an offset of one level everywhere is
    RMSE 1 and PSNR 20·log10(255) = 48.1308 dB. scikit-image's peak_signal_noise_ratio of the index
    images below gives 11.559182325956417 dB (0.21.0 and 0.26.0)."""
    black = np.zeros((8, 8, 3), np.uint8)
    white = np.full((8, 8, 3), 255, np.uint8)
    assert rmse(black, white) == 255.0 and psnr(black, white) == 0.0
    assert rmse(black, black + 1) == 1.0
    assert psnr(black, black + 1) == pytest.approx(48.13080360867910, abs=1e-9)
    assert psnr(black, black) == np.inf and rmse(white, white) == 0.0
    y, x = np.mgrid[0:48, 0:64]
    a = np.stack([(3 * x + 5 * y) % 256, (x * y) % 256, (7 * x) % 256], axis=2).astype(np.uint8)
    assert psnr(a, np.roll(a, 2, axis=1)) == pytest.approx(11.559182325956417, abs=1e-9)


def test_pixel_similarity_mappings() -> None:
    black = np.zeros((8, 8, 3), np.uint8)
    white = np.full((8, 8, 3), 255, np.uint8)
    rmse_metric, psnr_metric = RmseMetric(), PsnrMetric()
    assert rmse_metric.compare([black, white])[0, 1] == 0.0
    assert psnr_metric.compare([black, white])[0, 1] == 0.0
    assert rmse_metric.compare([black, black + 1])[0, 1] == pytest.approx(1 - 1 / 255)
    assert psnr_metric.compare([black, black + 1])[0, 1] == pytest.approx(48.1308036086791 / PSNR_CEILING_DB)
    # Above the 60 dB ceiling everything counts as identical.
    almost = black.copy()
    almost[0, 0, 0] = 1  # MSE 1/192: PSNR 70.9 dB
    assert psnr_metric.compare([black, almost])[0, 1] == 1.0


@pytest.mark.parametrize("cls", [PsnrMetric, RmseMetric])
def test_pixel_matrix_is_exactly_the_pair_scores(cls: type) -> None:
    """The Gram-matrix form is exact on 8-bit data: bit-identical to pair-by-pair scores."""
    metric = cls()
    prepared = metric.prepare([smooth_image(seed) for seed in range(5)])
    matrix = metric.matrix(prepared)
    for i in range(5):
        for j in range(5):
            if i != j:
                assert matrix[i, j] == metric.score(prepared[i], prepared[j])


def test_pixel_helper_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        rmse(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="empty"):
        psnr(np.zeros((0, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((4, 4)), np.ones((4, 4)), data_range=0)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10), st.just(3))), st.integers(0, 255))
def test_pixel_property_ranges(a: np.ndarray, level: int) -> None:
    """Both similarities from scikit-image's MSE and PSNR of the same pair, written out here."""
    b = np.full_like(a, level)
    mse = mean_squared_error(a, b)
    rmse_value = RmseMetric().compare([a, b])[0, 1]
    assert rmse_value == pytest.approx(1.0 - math.sqrt(mse) / 255.0, abs=1e-12)
    assert (rmse_value == 1.0) == bool(np.array_equal(a, b))
    psnr_value = PsnrMetric().compare([a, b])[0, 1]
    if mse == 0:
        assert psnr_value == 1.0
    else:
        db = peak_signal_noise_ratio(a, b, data_range=255)
        assert psnr_value == pytest.approx(min(db, 60.0) / 60.0, abs=1e-12)
        assert (psnr_value == 1.0) == (db >= 60.0)
    assert 0.0 <= rmse_value <= 1.0 and 0.0 <= psnr_value <= 1.0


# --- CLIP ----------------------------------------------------------------------------------------


def test_clip_embeddings_are_unit_vectors_and_deterministic() -> None:
    metric = make_metric("clip")
    images = [smooth_image(seed) for seed in range(3)]
    first = metric.prepare(images)
    second = metric.prepare(images)
    for a, b in zip(first, second, strict=True):
        assert a.shape == (TINY_CLIP_CONFIG["embed_dim"],)
        assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_array_equal(a, b)


def test_clip_batching_does_not_change_embeddings() -> None:
    model, preprocess = tiny_clip()
    images = [smooth_image(seed) for seed in range(5)]
    one = ClipMetric(model_obj=model, preprocess=preprocess, batch_size=1).prepare(images)
    many = ClipMetric(model_obj=model, preprocess=preprocess, batch_size=4).prepare(images)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_clip_puts_injected_model_in_eval_mode() -> None:
    model, preprocess = tiny_clip()
    model.train()
    ClipMetric(model_obj=model, preprocess=preprocess).prepare([smooth_image(0)])
    assert not model.training


def test_clip_missing_weights_file_raises_model_load_error() -> None:
    metric = ClipMetric(pretrained="/nonexistent.bin")
    with pytest.raises(ModelLoadError, match=r"/nonexistent\.bin") as info:
        metric.prepare([smooth_image(0)])
    message = str(info.value)
    assert "ViT-B-32" in message and "--clip-pretrained" in message
    assert issubclass(ModelLoadError, CfgsimError)


def test_clip_without_open_clip_raises_model_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(ModelLoadError, match="pip install open-clip-torch"):
        ClipMetric().load()


def test_clip_needs_model_and_preprocess_together() -> None:
    with pytest.raises(InputError, match="together"):
        ClipMetric(model_obj=object())


@pytest.fixture
def tiny_clip_config(tmp_path: Path) -> str:
    """Register the tiny architecture with open_clip under a test-only name."""
    pytest.importorskip("torch", reason="the clip metric needs torch")
    open_clip = pytest.importorskip("open_clip", reason="the clip metric needs open-clip-torch")
    name = "cfgsim-tiny-test"
    (tmp_path / f"{name}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    return name


def test_clip_loads_local_weights_file(tiny_clip_config: str, tmp_path: Path) -> None:
    """The real loading path, offline: open_clip builds the model and loads a local file."""
    import torch

    model, preprocess = tiny_clip()
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    images = [smooth_image(seed) for seed in range(3)]
    loaded = ClipMetric(model=tiny_clip_config, pretrained=str(weights), device="cpu")
    loaded.load()
    assert loaded.settings() == {"model": tiny_clip_config, "pretrained": str(weights)}
    expected = ClipMetric(model_obj=model, preprocess=preprocess, device="cpu").prepare(images)
    for a, b in zip(loaded.prepare(images), expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_clip_bad_weights_file_raises_model_load_error(tiny_clip_config: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"not a checkpoint at all")
    metric = ClipMetric(model=tiny_clip_config, pretrained=str(bad), device="cpu")
    with pytest.raises(ModelLoadError, match=r"broken\.bin"):
        metric.load()


# --- SSIM memory ---------------------------------------------------------------------------------


def _traced_peak(func) -> tuple[object, int]:
    """(func(), peak bytes allocated meanwhile): numpy reports its buffers to tracemalloc."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = func()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ssim_prepare_keeps_no_statistics() -> None:
    """Preparing holds the images only: the old prepare made 18 bytes of statistics per pixel and
    channel for every image at once (2048² RGB: 226 MB an image, whatever the matrix needed)."""
    images = [smooth_image(seed, 256, 256) for seed in range(8)]
    metric = SsimMetric(workers=1)
    _, peak = _traced_peak(lambda: metric.prepare(images))
    assert peak < 256 * 256 * 3  # less than one image's worth: nothing is copied


@pytest.mark.parametrize("workers", [1, 2])
def test_ssim_matrix_memory_stays_within_the_budget(workers: int) -> None:
    images = [smooth_image(seed, 256, 192) for seed in range(8)]
    metric = SsimMetric(workers=workers)
    metric.memory_budget = 6 * 2**20  # the full statistics would take 8 x 2.65 MB
    matrix, peak = _traced_peak(lambda: metric.compare(images))
    assert peak <= metric.memory_budget
    prepared = metric.prepare(images)
    assert metric.plan(8, (3, 256, 192))[1] < 250  # several bands
    # Banding changes nothing but the order of float32 sums: the same matrix as one band to ~1e-8,
    # and scikit-image's values.
    whole = SsimMetric(workers=workers).matrix(prepared)
    np.testing.assert_allclose(matrix, whole, rtol=0, atol=1e-7)
    for i in range(8):
        for j in range(i + 1, 8):
            assert matrix[i, j] == pytest.approx(sk_ssim(images[i], images[j]), abs=SKIMAGE_TOLERANCE)
    assert metric.score(prepared[2], prepared[5]) == pytest.approx(matrix[2, 5], abs=1e-7)


def test_ssim_plan_fits_the_budget_and_caps_workers() -> None:
    metric = SsimMetric(workers=8)
    workers, band = metric.plan(8, (3, 2048, 2048))
    assert 16 <= band < 2042 and workers >= 1
    metric.memory_budget = 8 * 2**20
    workers, band = metric.plan(8, (3, 2048, 2048))
    assert band == 16 and workers < 8  # the smallest band, then fewer workers
    # A small image is one band.
    assert SsimMetric().plan(4, (3, 64, 64))[1] == 58


def test_ssim_helper_is_banded_too(monkeypatch) -> None:
    a, b = smooth_image(1, 384, 256), smooth_image(2, 384, 256)
    expected = sk_ssim(a, b)
    monkeypatch.setattr(SsimMetric, "memory_budget", 3 * 2**20)  # whole-image statistics: 5.3 MB
    value, peak = _traced_peak(lambda: ssim(a, b, channel_axis=2))
    assert value == pytest.approx(expected, abs=SKIMAGE_TOLERANCE)
    assert peak <= 3 * 2**20
    grey = a[..., 0].astype(np.float64)
    assert ssim(grey, grey, data_range=255) == 1.0
