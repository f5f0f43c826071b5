"""DCT-scaled JPEG decode (simplejpeg): which images take it, what it returns, and that
everything else keeps Pillow's path. Each case is checked both ways: with simplejpeg and
with the path forced to Pillow (``jpeg_decoder="pillow"``, or simplejpeg made missing)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import models.preprocessing as preprocessing
from models import Preprocessing, TruncatedImageError, decode_image
from tests.models import sample_images

pytest.importorskip("simplejpeg")


def _large_photo_jpeg() -> bytes:
    """The cat at 1353x900 (3x), a camera-like size that DCT scaling reduces."""
    image = sample_images.chelsea_image().resize((1353, 900), Image.Resampling.BICUBIC)
    return sample_images.encode(image, "JPEG", quality=90)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """simplejpeg.decode_jpeg calls made in the test (wraps the real one)."""
    import simplejpeg

    made: list[dict[str, object]] = []
    real = simplejpeg.decode_jpeg

    class Wrapped:
        @staticmethod
        def decode_jpeg(data: bytes, **kwargs: object) -> np.ndarray:
            made.append(kwargs)
            return real(data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(preprocessing, "_import_simplejpeg", lambda: Wrapped)
    return made


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_target(
    calls: list[dict[str, object]],
) -> None:
    data = _large_photo_jpeg()
    fast = decode_image(data, target_short_side=256)
    assert len(calls) == 1
    # 1/2 of 1353x900: the smallest of 1/2, 1/4, 1/8 keeping the short side >= 256.
    assert (fast.mode, fast.size) == ("RGB", (677, 450))
    pillow = decode_image(data, target_short_side=256, jpeg_decoder="pillow")
    assert len(calls) == 1 and pillow.size == (677, 450)  # Pillow's draft: 1/2 only
    # Same scale as Pillow's draft: the same pixels up to libjpeg-turbo's rounding.
    pre = Preprocessing(256, 224)
    diff = (pre.pixels(fast).float() - pre.pixels(pillow).float()).abs()
    assert float(diff.mean()) < 1.0, float(diff.mean())


def test_a_small_jpeg_keeps_its_size(calls: list[dict[str, object]]) -> None:
    image = decode_image(sample_images.jpeg(), target_short_side=256)
    assert len(calls) == 1 and image.size == sample_images.CHELSEA_SIZE
    assert float(np.abs(np.asarray(image, np.float32) - sample_images.chelsea()).mean()) < 3


def test_without_a_target_or_without_simplejpeg_pillow_decodes(
    calls: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _large_photo_jpeg()
    assert decode_image(data).size == (1353, 900) and calls == []
    monkeypatch.setattr(preprocessing, "_import_simplejpeg", lambda: None)
    assert decode_image(data, target_short_side=256).size == (677, 450)


@pytest.mark.parametrize(
    "sample", ["exif_rotated_jpeg", "exif_upright_jpeg", "cmyk_jpeg", "rgba_png", "webp", "gray16_png"]
)
def test_rotated_cmyk_and_other_formats_keep_pillows_path(
    calls: list[dict[str, object]], sample: str
) -> None:
    data = getattr(sample_images, sample)()
    image = decode_image(data, target_short_side=256)
    assert calls == []
    expected = decode_image(data, target_short_side=256, jpeg_decoder="pillow")
    assert image.size == expected.size and image.tobytes() == expected.tobytes()


def test_exif_orientation_1_takes_the_fast_path_and_stays_upright(calls: list[dict[str, object]]) -> None:
    image = decode_image(sample_images.exif_rotated_jpeg(orientation=1), target_short_side=256)
    assert len(calls) == 1 and image.size == sample_images.CHELSEA_SIZE


def test_gray_jpeg_is_rgb_with_equal_channels(calls: list[dict[str, object]]) -> None:
    image = decode_image(sample_images.gray_jpeg(), target_short_side=256)
    assert len(calls) == 1 and image.mode == "RGB"
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    pillow = np.asarray(decode_image(sample_images.gray_jpeg(), jpeg_decoder="pillow"), np.int16)
    assert int(np.abs(pixels.astype(np.int16) - pillow).max()) <= 2


def test_truncated_jpeg_is_a_truncated_image_error_on_both_paths(calls: list[dict[str, object]]) -> None:
    for decoder in ("auto", "pillow"):
        with pytest.raises(TruncatedImageError, match="truncated or corrupt"):
            decode_image(sample_images.truncated_jpeg(), target_short_side=256, jpeg_decoder=decoder)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_the_bomb_limit_is_checked_before_simplejpeg_decodes(calls: list[dict[str, object]]) -> None:
    from models import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        decode_image(_large_photo_jpeg(), target_short_side=256, max_pixels=1353 * 900 - 1)
    assert calls == []


def test_a_corrupt_exif_block_is_the_same_error_on_both_paths(calls: list[dict[str, object]]) -> None:
    image = sample_images.chelsea_image()
    buf = io.BytesIO()
    image.save(
        buf, "JPEG", quality=90, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"
    )  # IFD offset past the end
    errors = []
    for decoder in ("auto", "pillow"):
        with pytest.raises(TruncatedImageError) as info:
            decode_image(buf.getvalue(), target_short_side=256, jpeg_decoder=decoder)  # type: ignore[arg-type]
        errors.append(str(info.value))
    assert errors[0] == errors[1] and calls == []
