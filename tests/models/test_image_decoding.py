"""decode_image: error mapping, bomb limit, mode conversion, EXIF orientation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from models import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    EmptyImageError,
    ImageDecodeError,
    ImageFileTooLargeError,
    ImageTooLargeError,
    TruncatedImageError,
    UnsupportedImageError,
    check_file_size,
    decode_image,
)
from tests.models import sample_images

ALL_SAMPLES = [
    "jpeg",
    "rgba_png",
    "animated_palette_gif",
    "gray16_png",
    "cmyk_jpeg",
    "gray_jpeg",
    "webp",
    "bmp",
    "tiff",
    "exif_rotated_jpeg",
]


def _mean_abs_diff(image: Image.Image, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(image, dtype=np.float32) - expected.astype(np.float32)).mean())


def test_jpeg_decodes_to_loaded_rgb_of_the_photo() -> None:
    image = decode_image(sample_images.jpeg())
    assert (image.mode, image.size) == ("RGB", sample_images.CHELSEA_SIZE)
    assert _mean_abs_diff(image, sample_images.chelsea()) < 3  # JPEG quality 90


def test_error_classes_are_value_errors() -> None:
    for error in (EmptyImageError, UnsupportedImageError, TruncatedImageError, ImageTooLargeError):
        assert issubclass(error, ImageDecodeError)
    assert issubclass(ImageDecodeError, ValueError)


def test_zero_bytes_raise_empty_image_error() -> None:
    with pytest.raises(EmptyImageError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_raise_unsupported_image_error(seed: int) -> None:
    noise = np.random.default_rng(seed).bytes(4096)
    with pytest.raises(UnsupportedImageError, match="cannot identify"):
        decode_image(noise)


def test_text_file_raises_unsupported_image_error() -> None:
    with open(sample_images.__file__, "rb") as source:
        text = source.read()
    with pytest.raises(UnsupportedImageError, match="cannot identify"):
        decode_image(text)


@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_prefixes_and_corruptions_raise_only_decode_errors(sample: str) -> None:
    data = getattr(sample_images, sample)()
    rng = np.random.default_rng(0)
    candidates = [data[:n] for n in (1, 2, 3, 4, 8, 12, 16, 20, 40, 100, 400, len(data) // 3)]
    for _ in range(5):  # 20 random bytes overwritten
        corrupted = np.frombuffer(data, dtype=np.uint8).copy()
        corrupted[rng.integers(0, len(data), 20)] = rng.integers(0, 256, 20)
        candidates.append(corrupted.tobytes())
    for candidate in candidates:
        try:
            image = decode_image(candidate)
        except ImageDecodeError:
            continue  # any Pillow exception must arrive mapped
        assert image.mode == "RGB"


def test_truncated_jpeg_raises_truncated_image_error() -> None:
    with pytest.raises(TruncatedImageError, match="truncated") as info:
        decode_image(sample_images.truncated_jpeg())
    assert isinstance(info.value.__cause__, OSError)  # Pillow's error is chained


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = sample_images.decompression_bomb_png(20_000, 20_000)
    assert len(bomb) < 200_000  # small file, 400 million pixels
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bomb)
    assert str(info.value) == (
        "image has 400000000 pixels (PNG 20000x20000), over the decompression-bomb "
        f"limit of {DEFAULT_MAX_PIXELS} (max_pixels)"
    )


def test_small_max_pixels_refuses_a_normal_image() -> None:
    with pytest.raises(ImageTooLargeError, match="135300 pixels.*limit of 135299"):
        decode_image(sample_images.jpeg(), max_pixels=451 * 300 - 1)
    assert decode_image(sample_images.jpeg(), max_pixels=451 * 300).size == (451, 300)


def test_limit_does_not_depend_on_pillows_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert decode_image(sample_images.jpeg()).size == sample_images.CHELSEA_SIZE
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        decode_image(sample_images.decompression_bomb_png(10_000, 10_000))


@pytest.mark.parametrize(
    "sample",
    ["rgba_png", "animated_palette_gif", "gray16_png", "cmyk_jpeg", "gray_jpeg", "webp", "bmp", "tiff"],
)
def test_every_mode_decodes_to_rgb_of_the_right_size(sample: str) -> None:
    image = decode_image(getattr(sample_images, sample)())
    assert image.mode == "RGB"
    assert image.size == sample_images.CHELSEA_SIZE


@pytest.mark.parametrize("sample", ["bmp", "tiff"])
def test_lossless_formats_give_the_exact_pixels(sample: str) -> None:
    image = decode_image(getattr(sample_images, sample)())
    np.testing.assert_array_equal(np.asarray(image), sample_images.chelsea())


def test_rgba_is_composited_on_white() -> None:
    pixels = np.asarray(decode_image(sample_images.rgba_png()))
    half = sample_images.CHELSEA_SIZE[0] // 2
    assert (pixels[:, :half] == 255).all()  # alpha 0 -> white
    np.testing.assert_array_equal(pixels[:, half:], sample_images.chelsea()[:, half:])


def test_animated_gif_gives_its_first_frame_with_transparency_on_white() -> None:
    pixels = np.asarray(decode_image(sample_images.animated_palette_gif()))
    assert (pixels[:10, :10] == 255).all()  # transparent palette index -> white
    photo = sample_images.chelsea().astype(np.float32)
    first_frame_error = np.abs(pixels[10:] - photo[10:]).mean()
    second_frame_error = np.abs(pixels[10:] - photo[::-1][10:]).mean()
    assert first_frame_error < 10 < second_frame_error


def test_16_bit_gray_scales_to_8_bit() -> None:
    pixels = np.asarray(decode_image(sample_images.gray16_png()))
    gray = np.asarray(sample_images.chelsea_image().convert("L"))
    for channel in range(3):  # value * 257 * 255 / 65535 == value, exactly
        np.testing.assert_array_equal(pixels[..., channel], gray)


def test_cmyk_jpeg_keeps_the_colours() -> None:
    assert _mean_abs_diff(decode_image(sample_images.cmyk_jpeg()), sample_images.chelsea()) < 6


def test_gray_jpeg_has_equal_channels() -> None:
    pixels = np.asarray(decode_image(sample_images.gray_jpeg()))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_exif_orientation_6_is_rotated_90_degrees_clockwise() -> None:
    image = decode_image(sample_images.exif_rotated_jpeg(6))
    assert image.size == (300, 451)  # width and height swapped
    rotated = np.rot90(sample_images.chelsea(), k=-1)  # clockwise
    assert _mean_abs_diff(image, rotated) < 3


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_gives_the_upright_photo(orientation: int) -> None:
    image = decode_image(sample_images.exif_upright_jpeg(orientation))
    assert image.size == sample_images.CHELSEA_SIZE
    assert _mean_abs_diff(image, sample_images.chelsea()) < 3  # JPEG noise only


def test_file_over_max_bytes_raises_image_file_too_large_error() -> None:
    data = sample_images.jpeg()
    with pytest.raises(ImageFileTooLargeError, match=rf"{len(data)} bytes .*limit of {len(data) - 1} bytes"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).size == sample_images.CHELSEA_SIZE
    assert issubclass(ImageFileTooLargeError, ImageDecodeError)


def test_default_max_bytes_refuses_a_50_mb_file_and_accepts_a_large_photo() -> None:
    assert DEFAULT_MAX_BYTES == 32 * 1024 * 1024
    with pytest.raises(ImageFileTooLargeError, match="50000000 bytes.*max_bytes"):
        check_file_size(50_000_000)
    with pytest.raises(ImageFileTooLargeError, match="max_bytes"):
        decode_image(sample_images.padded_jpeg(DEFAULT_MAX_BYTES + 1))
    check_file_size(DEFAULT_MAX_BYTES)  # at the limit: accepted
    assert decode_image(sample_images.padded_jpeg(DEFAULT_MAX_BYTES)).size == sample_images.CHELSEA_SIZE


def test_target_short_side_drafts_jpeg_keeping_the_short_side() -> None:
    data = sample_images.DARKNET_DOG_JPEG.read_bytes()  # 768x576
    assert decode_image(data).size == (768, 576)
    drafted = decode_image(data, target_short_side=256)  # libjpeg 1/2 scale
    assert drafted.size == (384, 288) and min(drafted.size) >= 256
    assert decode_image(data, target_short_side=577).size == (768, 576)  # no reduction fits


def test_target_short_side_leaves_other_formats_full_size() -> None:
    assert decode_image(sample_images.bmp(), target_short_side=64).size == (451, 300)


@pytest.mark.parametrize("bad", [{"max_pixels": 0}, {"max_bytes": 0}, {"target_short_side": 0}])
def test_non_positive_arguments_raise_value_error(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_image(sample_images.jpeg(), **bad)


def test_concurrent_decodes_agree() -> None:
    data = sample_images.jpeg()
    expected = np.asarray(decode_image(data))
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(lambda _: decode_image(data), range(16)))
    for image in images:
        np.testing.assert_array_equal(np.asarray(image), expected)
