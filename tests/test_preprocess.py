"""The shared preprocessing: every Pillow mode to RGB, EXIF orientation, resize policy, bad files.

Images here are 32x32 (the input size) unless a test is about resizing, so expected pixels are
exact: no resampling stands between what a test writes and what the model would see.
"""

from __future__ import annotations

import dataclasses
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime.errors import ImageError
from edge_runtime.fixed_point_resize import fixed_point_bilinear
from edge_runtime.preprocess import (DEFAULT_SPEC, FIXED_POINT_BILINEAR, MAX_IMAGE_PIXELS, Normalization,
                                     PreprocessSpec, array_to_input, load_image, open_image, prepare_image,
                                     scale_pixels)
from runtime_fixtures import BOMB_SIDE, bad_files, png_declaring
from synthetic import synthetic_arrays

SIZE = DEFAULT_SPEC.width
WHITE = (255, 255, 255)
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_90_CLOCKWISE = 6  # EXIF: the stored image must be turned 90 degrees clockwise to display
BOMB_SECONDS = 1.0
# A 40000x40000 RGB decode would need 4.8 GB; opening must stay far below that.
BOMB_MAX_TRACED_BYTES = 5 * 1024 * 1024
BOMB_MAX_RSS_GROWTH_KIB = 100 * 1024
# MediaPipe's resize (models from elsewhere), checked against OpenCV. Output sides that are multiples
# of 32 put no source coordinate exactly between two 1/32-pixel steps, so the plain rule
# round(x * source / output * 32) gives OpenCV's coordinates; the other sizes are checked against
# MediaPipe itself in tests/test_mediapipe_parity.py. (source height, width) -> (height, width):
# down, up, up one way and down the other, a single pixel.
WARP_SIZES = [((720, 1280), (224, 224)), ((10, 13), (96, 160)), ((7, 301), (32, 96)), ((333, 517), (224, 160)),
              ((1, 1), (32, 32))]
FIXED_POINT_SPEC = PreprocessSpec(height=SIZE, width=SIZE, resize="stretch", resample=FIXED_POINT_BILINEAR)
# This OpenCV's own warpAffine interpolates in float at the exact coordinate; ours at the nearest
# 1/32 pixel, at most 1/64 away on each axis. A pixel changes by at most 255 across a whole pixel,
# so by at most 255 / 64 < 4 per axis: under 8 in all, and 9 with the two roundings to whole codes.
FLOAT_WARP_MAX_DIFFERENCE = 9


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """One 32x32 synthetic RGB image with detail in every channel."""
    images, _ = synthetic_arrays(1, seed=3)
    return images[2]


def save(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


# --- modes --------------------------------------------------------------------------------------

def test_rgb_png_is_returned_exactly(tmp_path: Path, picture: np.ndarray) -> None:
    pixels = load_image(save(tmp_path, Image.fromarray(picture), "rgb.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(pixels, picture)


def test_rgba_is_composited_on_the_white_background(tmp_path: Path, picture: np.ndarray) -> None:
    alpha = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    alpha[:, :8] = 0      # transparent: background shows
    alpha[:, 8:16] = 128  # half: a blend
    rgba = np.dstack([picture, alpha])
    pixels = load_image(save(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png"))

    assert (pixels[:, :8] == WHITE).all()
    np.testing.assert_array_equal(pixels[:, 16:], picture[:, 16:])
    blend = (picture[:, 8:16].astype(np.float64) * 128 + 255 * 127) / 255
    assert np.abs(pixels[:, 8:16] - blend).max() <= 1.0


def test_la_grey_with_alpha_becomes_grey_rgb_on_white(tmp_path: Path) -> None:
    grey = np.full((SIZE, SIZE), 40, dtype=np.uint8)
    alpha = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    alpha[:4] = 0
    image = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    pixels = load_image(save(tmp_path, image, "la.png"))
    assert (pixels[:4] == WHITE).all()
    assert (pixels[4:] == 40).all()


def test_palette_with_transparent_index_shows_the_background(tmp_path: Path) -> None:
    indices = np.zeros((SIZE, SIZE), dtype=np.uint8)
    indices[:, SIZE // 2:] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * (256 * 3 - 6))
    path = save(tmp_path, image, "palette.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    pixels = load_image(path)
    assert (pixels[:, :SIZE // 2] == WHITE).all()
    assert (pixels[:, SIZE // 2:] == (200, 30, 40)).all()


def test_grey_l_and_bilevel_1_become_equal_channels(tmp_path: Path, picture: np.ndarray) -> None:
    grey = picture[..., 0]
    pixels = load_image(save(tmp_path, Image.fromarray(grey, "L"), "grey.png"))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], grey)

    bilevel = Image.fromarray(grey > 128).convert("1")
    pixels = load_image(save(tmp_path, bilevel, "bilevel.png"))
    assert set(np.unique(pixels)) <= {0, 255}
    np.testing.assert_array_equal(pixels[..., 1], np.where(grey > 128, 255, 0))


def test_sixteen_bit_grey_keeps_the_top_byte(tmp_path: Path) -> None:
    values = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 64  # 0 .. 65472
    path = save(tmp_path, Image.fromarray(values), "sixteen.png")
    assert Image.open(path).mode in ("I;16", "I")  # Pillow versions differ in how they open it
    pixels = load_image(path)
    np.testing.assert_array_equal(pixels[..., 0], (values >> 8).astype(np.uint8))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_modes_in_memory(mode: str) -> None:
    values = np.full((SIZE, SIZE), 0xABCD, dtype=np.uint16)
    image = Image.fromarray(values) if mode == "I;16" else Image.fromarray(values.astype(np.int32))
    assert image.mode == mode
    pixels = prepare_image(image)
    assert (pixels == 0xAB).all()


def test_float_f_images_in_unit_range_are_scaled_to_bytes(tmp_path: Path) -> None:
    values = np.linspace(0.0, 1.0, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    path = save(tmp_path, Image.fromarray(values, "F"), "float.tiff")
    assert Image.open(path).mode == "F"
    pixels = load_image(path)
    np.testing.assert_array_equal(pixels[..., 2], (values * 255).astype(np.uint8))
    assert pixels.max() == 255


def test_cmyk_matches_pillows_own_conversion(tmp_path: Path, picture: np.ndarray) -> None:
    cmyk = Image.fromarray(picture).convert("CMYK")
    path = save(tmp_path, cmyk, "cmyk.tiff")
    assert Image.open(path).mode == "CMYK"
    np.testing.assert_array_equal(load_image(path), np.asarray(cmyk.convert("RGB")))


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    red = Image.new("RGB", (SIZE, SIZE), (255, 0, 0))
    blue = Image.new("RGB", (SIZE, SIZE), (0, 0, 255))
    path = tmp_path / "animated.gif"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.is_animated and check.n_frames == 2
        check.seek(1)  # an already-advanced image is rewound too
        pixels = prepare_image(check)
    assert (pixels == (255, 0, 0)).all()
    assert (load_image(path) == (255, 0, 0)).all()


# --- orientation and resizing -------------------------------------------------------------------

def test_exif_rotation_gives_the_same_pixels_as_the_pre_rotated_image(tmp_path: Path) -> None:
    images, _ = synthetic_arrays(1, seed=4, size=48)
    stored = Image.fromarray(images[1][:, :32])  # 32 wide, 48 high: not square
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATED_90_CLOCKWISE
    tagged = save(tmp_path, stored, "tagged.png", exif=exif)
    upright = save(tmp_path, stored.transpose(Image.Transpose.ROTATE_270), "upright.png")
    assert Image.open(upright).size == (48, 32)

    rotated = load_image(tagged)
    np.testing.assert_array_equal(rotated, load_image(upright))
    ignoring_exif = load_image(tagged, PreprocessSpec(exif_orientation=False))
    assert not np.array_equal(rotated, ignoring_exif)  # the tag really changed something


def test_exif_rotation_in_a_jpeg_matches_the_upright_jpeg(tmp_path: Path) -> None:
    images, _ = synthetic_arrays(1, seed=5, size=64)
    stored = Image.fromarray(images[0][:, :40])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATED_90_CLOCKWISE
    tagged = save(tmp_path, stored, "tagged.jpg", exif=exif, quality=95)
    upright = save(tmp_path, stored.transpose(Image.Transpose.ROTATE_270), "upright.jpg", quality=95)
    difference = np.abs(load_image(tagged).astype(int) - load_image(upright).astype(int))
    assert difference.mean() < 4.0  # only JPEG's re-encoding differs


def test_centre_crop_drops_the_sides_of_a_wide_image(tmp_path: Path, picture: np.ndarray) -> None:
    wide = np.zeros((SIZE, SIZE + 16, 3), dtype=np.uint8)
    wide[:, :8] = (255, 0, 0)
    wide[:, -8:] = (255, 0, 0)
    wide[:, 8:-8] = picture
    pixels = load_image(save(tmp_path, Image.fromarray(wide), "wide.png"))
    np.testing.assert_array_equal(pixels, picture)


def test_a_big_photo_and_its_32px_version_are_treated_alike(tmp_path: Path, picture: np.ndarray) -> None:
    big = Image.fromarray(picture).resize((1600, 1200), Image.Resampling.BICUBIC)  # 4:3 like a photo
    small = big.resize((SIZE * 4 // 3, SIZE), Image.Resampling.BILINEAR)
    from_photo = load_image(save(tmp_path, big, "photo.jpg", quality=95))
    from_small = load_image(save(tmp_path, small, "small.png"))
    assert from_photo.shape == from_small.shape == (SIZE, SIZE, 3)
    assert np.abs(from_photo.astype(int) - from_small.astype(int)).mean() < 8.0


def test_array_to_input_resizes_camera_frames_and_passes_input_sized_ones(picture: np.ndarray) -> None:
    np.testing.assert_array_equal(array_to_input(picture), picture)
    frame = np.asarray(Image.fromarray(picture).resize((SIZE * 10, SIZE * 10), Image.Resampling.NEAREST))
    assert np.abs(array_to_input(frame).astype(int) - picture.astype(int)).mean() < 12.0
    grey = array_to_input(picture[..., 0])
    np.testing.assert_array_equal(grey[..., 2], picture[..., 0])
    with pytest.raises(ImageError, match=r"frame of shape \(32, 32, 5\) is not an RGB image"):
        array_to_input(np.zeros((SIZE, SIZE, 5), dtype=np.uint8))


# --- MediaPipe's resize, for models from elsewhere ---------------------------------------------------

def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("source, target", WARP_SIZES)
def test_fixed_point_bilinear_is_opencvs_fixed_point_interpolation_exactly(source, target) -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV (the camera extra) is not installed")
    pixels = _noise(*source)
    (source_height, source_width), (height, width) = source, target
    # OpenCV's remap with fixed-point maps: whole pixels, and the 1/32 fractions as a table index.
    rows = np.rint(np.arange(height) * (source_height / height) * 32).astype(np.int64)
    columns = np.rint(np.arange(width) * (source_width / width) * 32).astype(np.int64)
    y, x = np.meshgrid(rows, columns, indexing="ij")
    whole = np.dstack([x >> 5, y >> 5]).astype(np.int16)
    fractions = ((y & 31) * 32 + (x & 31)).astype(np.uint16)
    expected = cv2.remap(pixels, whole, fractions, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    np.testing.assert_array_equal(fixed_point_bilinear(pixels, height, width), expected)


@pytest.mark.parametrize("source, target", WARP_SIZES)
def test_fixed_point_bilinear_maps_corners_as_opencvs_warp_affine(source, target) -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV (the camera extra) is not installed")
    pixels = _noise(*source, seed=1)
    (source_height, source_width), (height, width) = source, target
    matrix = np.array([[width / source_width, 0.0, 0.0], [0.0, height / source_height, 0.0]])
    expected = cv2.warpAffine(pixels, matrix, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE).astype(int)
    difference = np.abs(fixed_point_bilinear(pixels, height, width).astype(int) - expected)
    assert difference.max() <= FLOAT_WARP_MAX_DIFFERENCE
    assert difference.mean() < 1.0  # noise at its worst; a photo differs far less


def test_fixed_point_bilinear_samples_corner_aligned_without_averaging() -> None:
    """Output pixel x samples source x * 4 / 2: a 2x downscale takes every other pixel as it is."""
    pixels = _noise(6, 8, seed=2)
    np.testing.assert_array_equal(fixed_point_bilinear(pixels, 3, 4), pixels[::2, ::2])
    # Upscaling 2x puts new pixels halfway between two, rounded; the last repeats the edge.
    row = np.array([[[0, 0, 0], [101, 101, 101]]], dtype=np.uint8)
    np.testing.assert_array_equal(fixed_point_bilinear(row, 1, 4)[0, :, 0], [0, 51, 101, 101])
    np.testing.assert_array_equal(fixed_point_bilinear(pixels, 6, 8), pixels)


def test_files_and_camera_frames_get_the_same_fixed_point_resize(tmp_path: Path) -> None:
    pixels = _noise(45, 70, seed=3)
    path = save(tmp_path, Image.fromarray(pixels), "noise.png")
    expected = fixed_point_bilinear(pixels, SIZE, SIZE)
    np.testing.assert_array_equal(load_image(path, FIXED_POINT_SPEC), expected)
    np.testing.assert_array_equal(array_to_input(pixels, FIXED_POINT_SPEC), expected)
    np.testing.assert_array_equal(array_to_input(pixels[:, ::-1][:, ::-1], FIXED_POINT_SPEC), expected)  # any strides
    grey = array_to_input(pixels[..., 0], FIXED_POINT_SPEC)
    np.testing.assert_array_equal(grey[..., 1], expected[..., 0])
    assert not np.array_equal(load_image(path, dataclasses.replace(FIXED_POINT_SPEC, resample="bilinear")), expected)


def test_fixed_point_resize_decodes_jpeg_in_full_and_ours_keep_the_draft(tmp_path: Path) -> None:
    photo = Image.fromarray(_noise(48, 64, seed=4)).resize((1024, 768), Image.Resampling.BICUBIC)
    path = save(tmp_path, photo, "photo.jpg", quality=90)
    full = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(load_image(path, FIXED_POINT_SPEC), fixed_point_bilinear(full, SIZE, SIZE))
    with Image.open(path) as drafted:  # what our own models see: decoded at 1/4 scale first
        drafted.draft("RGB", (SIZE * 4, SIZE * 4))
        assert drafted.size == (256, 192)
        np.testing.assert_array_equal(load_image(path), prepare_image(drafted))


def test_fixed_point_resampling_is_a_spec_of_its_own_and_needs_stretch() -> None:
    data = FIXED_POINT_SPEC.to_dict()
    assert data["resample"] == "fixed_point_bilinear" and data["resize"] == "stretch"
    assert PreprocessSpec.from_dict(data) == FIXED_POINT_SPEC
    assert PreprocessSpec.from_dict(DEFAULT_SPEC.to_dict()) == DEFAULT_SPEC  # ours read as before
    assert (DEFAULT_SPEC.resize, DEFAULT_SPEC.resample) == ("center_crop", "bilinear")
    with pytest.raises(ValueError) as caught:
        PreprocessSpec.from_dict({**data, "resize": "center_crop"})
    assert str(caught.value) == ("resampling 'fixed_point_bilinear' resizes the whole image: "
                                 "it needs the 'stretch' resize policy, not 'center_crop'")
    with pytest.raises(ValueError, match="unsupported resampling 'area'"):
        PreprocessSpec.from_dict({**data, "resample": "area"})


def test_normalization_as_a_range_is_the_same_rule_within_a_float32_step() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    for normalization in (Normalization(mean=(127.5,), std=(127.5,)), Normalization(mean=(0.0,), std=(255.0,)),
                          Normalization(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))):
        ranged = normalization.apply_as_range(pixels)
        assert ranged.dtype == np.float32
        np.testing.assert_allclose(ranged, normalization.apply(pixels), rtol=0, atol=2e-6)
    mobilenet = Normalization(mean=(127.5,), std=(127.5,)).apply_as_range(pixels)
    assert (mobilenet[0, 0, 0], mobilenet[-1, -1, 0]) == (-1.0, 1.0)


def test_scale_pixels_is_bit_identical_to_dividing_by_255() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    scaled = scale_pixels(pixels)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, pixels.astype(np.float32) / np.float32(255.0))
    custom = scale_pixels(pixels, PreprocessSpec(scale=2.0 / 255.0, offset=-1.0))
    np.testing.assert_allclose(custom, pixels / 127.5 - 1.0, atol=1e-6)


# --- bad files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "truncated_jpeg", "truncated_png", "text", "folder", "bomb"])
def test_each_bad_file_is_one_image_error_naming_file_and_reason(tmp_path: Path, kind: str) -> None:
    path, reason = bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {reason}"), message
    assert "\n" not in message


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nothing\.png: no such file$"):
        load_image(tmp_path / "nothing.png")


def test_a_declared_40000_square_png_is_refused_fast_without_allocating_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(BOMB_SIDE, BOMB_SIDE))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageError, match="possible decompression bomb"):
            load_image(path)
        elapsed = time.perf_counter() - started
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < BOMB_SECONDS
    assert traced_peak < BOMB_MAX_TRACED_BYTES
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < BOMB_MAX_RSS_GROWTH_KIB


def test_our_own_limit_applies_below_pillows_hard_limit(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    path.write_bytes(png_declaring(12_000, 10_000))  # 120 MP: over our limit, under Pillow's error level
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(ImageError) as caught:
            load_image(path)
    assert str(caught.value) == (f"{path}: declares 12000x10000 pixels, more than the limit of "
                                 f"{MAX_IMAGE_PIXELS:,} (possible decompression bomb)")


def test_open_image_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "header.png"
    path.write_bytes(png_declaring(640, 480))  # pixel data missing: fine until decoded
    with open_image(path) as image:
        assert image.size == (640, 480)
    with pytest.raises(ImageError, match=r"header\.png: cannot decode image"):
        load_image(path)


@pytest.mark.parametrize("mean, std", [((0.0,), (1e-45,)), ((3e38,), (0.1,))])
def test_a_normalization_that_overflows_float32_is_refused(mean, std) -> None:
    """make fuzz found a metadata std of 1e-45: numpy warned of an overflow and the model got infinities."""
    from edge_runtime.preprocess import Normalization

    with pytest.raises(ValueError, match=r"overflows float32$"):
        Normalization(mean, std).validate()
    Normalization((127.5,), (127.5,)).validate()  # MobileNet's, for contrast: accepted
