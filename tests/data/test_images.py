"""Tests for tagger.images: every image is generated here with PIL, nothing is read from disk."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from tagger.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    decode_image,
    load_rgb,
    normalise_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def solid(color, size=(32, 32), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def noisy_jpeg(size=(300, 200)) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_close(pixel, expected, tol=8):
    assert all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected)), (pixel, expected)


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    return info.value.reason


# --- rejects ---------------------------------------------------------------


def test_image_error_carries_reason_and_detail():
    err = ImageError("too_small", "Image is 1x1.")
    assert isinstance(err, ValueError)
    assert (err.reason, err.detail) == ("too_small", "Image is 1x1.")
    assert "Image is 1x1." in str(err)


def test_empty_bytes():
    assert reason_of(b"") == "empty"


def test_html_page_saved_as_jpg_is_not_an_image():
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>nope</body></html>\n"
    assert reason_of(html) == "not_an_image"


def test_format_outside_allow_list_is_not_an_image():
    # TGA has no magic number; Pillow would happily "decode" junk as TGA if allowed.
    assert reason_of(encode(solid(RED), "TGA")) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_half_a_file_is_truncated(fmt):
    arr = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = encode(Image.fromarray(arr), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_cut_inside_header_is_truncated_not_not_an_image(fmt):
    data = encode(solid(RED, (64, 64)), fmt)
    assert reason_of(data[:30]) == "truncated"


def test_declared_size_over_limit_rejected_before_decoding():
    # 9000x9000 = 81M pixels: over our 64M default but under Pillow's own 89M
    # warning threshold, so only our header check can catch it. The file has no
    # real pixel data, so decoding it would give 'truncated' instead.
    data = png_header_only(9000, 9000)
    assert 9000 * 9000 > DEFAULT_MAX_PIXELS
    assert reason_of(data) == "too_large"


def test_pillow_decompression_bomb_error_is_too_large():
    assert reason_of(png_header_only(100_000, 100_000)) == "too_large"


def test_pixel_limit_does_not_depend_on_pillow_global(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert reason_of(png_header_only(9000, 9000)) == "too_large"
    assert reason_of(encode(solid(RED, (40, 30)), "PNG"), max_pixels=40 * 30 - 1) == "too_large"
    assert decode_image(encode(solid(RED, (40, 30)), "PNG"), max_pixels=40 * 30).size == (40, 30)


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(size):
    assert reason_of(encode(solid(RED, size), "PNG")) == "too_small"


def test_min_side_boundary_is_accepted():
    assert decode_image(encode(solid(RED, (8, 8)), "PNG")).size == (8, 8)
    assert reason_of(encode(solid(RED, (8, 8)), "PNG"), min_side=9) == "too_small"


# --- colour and mode handling ------------------------------------------------


def test_cmyk_jpeg_comes_out_red():
    data = encode(solid((0, 255, 255, 0), mode="CMYK"), "JPEG", quality=95)  # C=0 M=100% Y=100% K=0
    img = decode_image(data)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60, (r, g, b)


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF")])
@pytest.mark.parametrize("value, expected", [(0, 0), (32896, 128), (65535, 255)])
def test_16bit_grey_is_scaled_not_clipped(mode, fmt, value, expected):
    data = encode(solid(value, mode=mode), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # really 16/32-bit on disk
    img = decode_image(data)
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (expected,) * 3


def test_palette_png_transparency_composited_on_white():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    img.paste(1, (8, 0, 16, 16))  # right half opaque blue, left half index 0 = transparent black
    out = decode_image(encode(img, "PNG", transparency=0))
    assert out.mode == "RGB"
    assert out.getpixel((2, 8)) == WHITE
    assert out.getpixel((12, 8)) == BLUE


def test_rgba_half_alpha_blends_with_white():
    out = decode_image(encode(solid((255, 0, 0, 128), mode="RGBA"), "PNG"))
    assert_close(out.getpixel((4, 4)), (255, 127, 127), tol=2)


def test_greyscale_becomes_rgb():
    out = decode_image(encode(solid(77, mode="L"), "PNG"))
    assert out.mode == "RGB" and out.getpixel((3, 3)) == (77, 77, 77)


def test_exif_orientation_6_is_applied():
    # Stored 40 wide x 20 high with a red block top-left. Orientation 6 means
    # "rotate 90 degrees clockwise to display", which moves it to the top-right.
    img = solid(WHITE, (40, 20))
    img.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (20, 40)
    assert_close(out.getpixel((16, 3)), RED, tol=40)  # top-right
    for corner in [(3, 3), (3, 36), (16, 36)]:
        assert_close(out.getpixel(corner), WHITE, tol=40)


def test_animated_gif_first_frame():
    frames = [solid(c, (16, 16)) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert decode_image(data).getpixel((8, 8)) == RED


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_round_trip():
    arr = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(arr), "WEBP", lossless=True))
    assert out.mode == "RGB" and out.size == (40, 24)
    np.testing.assert_array_equal(np.asarray(out), arr)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_alpha_composited_on_white():
    out = decode_image(encode(solid((0, 0, 0, 0), mode="RGBA"), "WEBP", lossless=True))
    assert out.getpixel((4, 4)) == WHITE


# --- draft decoding -----------------------------------------------------------


def test_draft_decodes_big_jpeg_at_reduced_scale_but_not_below_draft_side():
    data = noisy_jpeg((1600, 800))
    assert decode_image(data).size == (1600, 800)
    small = decode_image(data, draft_side=300)
    assert 300 <= max(small.size) < 1600
    assert small.size == (400, 200)  # 1/4 scale is the smallest that keeps >= 300
    assert decode_image(data, draft_side=400).size == (400, 200)
    assert decode_image(data, draft_side=401).size == (800, 400)


def test_draft_is_ignored_for_non_jpeg():
    assert decode_image(encode(solid(RED, (400, 200)), "PNG"), draft_side=50).size == (400, 200)


# --- normalise_image / load_rgb ---------------------------------------------


def test_normalise_downscales_to_max_side_keeping_aspect_ratio():
    data, w, h = normalise_image(noisy_jpeg((1600, 900)), max_side=256)
    assert (w, h) == (256, 144)
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (256, 144)
    assert "progressive" not in out.info and "progression" not in out.info  # baseline


def test_normalise_portrait_png_downscaled():
    _, w, h = normalise_image(encode(solid(BLUE, (300, 1000)), "PNG"), max_side=100)
    assert (w, h) == (30, 100)


def test_normalise_never_upscales():
    data, w, h = normalise_image(encode(solid(GREEN, (100, 50)), "PNG"), max_side=512)
    assert (w, h) == (100, 50)
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (100, 50)
    assert_close(out.getpixel((50, 25)), GREEN, tol=10)


def test_normalise_applies_orientation_and_drops_the_tag():
    exif = Image.Exif()
    exif[0x0112] = 6
    data, w, h = normalise_image(encode(solid(RED, (400, 200)), "JPEG", exif=exif.tobytes()), max_side=100)
    assert (w, h) == (50, 100)
    # A surviving Orientation tag would make every viewer rotate it again.
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) is None


def test_normalise_quality_changes_size():
    src = noisy_jpeg((300, 200))
    low, _, _ = normalise_image(src, max_side=300, quality=30)
    high, _, _ = normalise_image(src, max_side=300, quality=95)
    assert len(low) < len(high)


def test_normalise_propagates_rejects():
    with pytest.raises(ImageError) as info:
        normalise_image(b"", max_side=100)
    assert info.value.reason == "empty"
    with pytest.raises(ValueError):
        normalise_image(encode(solid(RED), "PNG"), max_side=0)


def test_load_rgb_shape_dtype_and_values():
    data, w, h = normalise_image(encode(solid(BLUE, (120, 80)), "PNG"), max_side=64)
    arr = load_rgb(data)
    assert arr.shape == (h, w, 3) == (43, 64, 3)
    assert arr.dtype == np.uint8
    assert arr.flags.writeable
    assert_close(arr[20, 30], BLUE, tol=10)


def test_load_rgb_greyscale_jpeg_still_three_channels():
    arr = load_rgb(encode(solid(90, (20, 10), mode="L"), "JPEG"))
    assert arr.shape == (10, 20, 3) and arr.dtype == np.uint8


# --- one decode per image, draft decoding, the model's input without albumentations ---


def _photo(side: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: a drawn demo product enlarged to side x side px with sensor noise
    (smooth shapes + +-6 levels of noise, like benchmarks/catalogs.py), quality 90."""
    from tagger.demo.sample import _sample_product, render_product

    rng = np.random.default_rng(seed)
    img = render_product(_sample_product(rng), rng, 192).resize((side, side), Image.Resampling.BICUBIC)
    arr = np.asarray(img, np.int16) + rng.integers(-6, 7, (side, side, 3), dtype=np.int16)
    return encode(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), "JPEG", quality=90)


@pytest.mark.parametrize("shape", [(380, 253), (253, 380), (96, 96), (50, 70), (97, 300), (48, 48), (1, 40)])
@pytest.mark.parametrize("size", [96, 48])
def test_fit_square_gives_the_eval_transforms_pixels(shape, size):
    from tagger.data.images import fit_square
    from tagger.data.transforms import create_transforms

    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = create_transforms(size, train=False)(image=image)["image"]
    got = fit_square(image, size)
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_normalise_keeps_the_pixels_it_encoded():
    data = _photo(500)
    jpeg, w, h, pixels = normalise_image(data, max_side=380, keep_pixels=True)
    assert (w, h) == (380, 380) and pixels.shape == (380, 380, 3) and pixels.dtype == np.uint8
    assert normalise_image(data, max_side=380) == (jpeg, w, h)  # the same stored bytes
    decoded = load_rgb(jpeg).astype(np.int16)
    err = np.abs(decoded - pixels)
    # q90's loss on a photo with sensor noise (measured: mean 2.5, 99th percentile 14 levels)
    assert 0 < err.mean() < 3.5 and np.percentile(err, 99) <= 20


@pytest.mark.parametrize("side, draft_px", [(800, 400), (1500, 750), (760, 380), (740, 740)])
def test_draft_decode_is_within_jpeg_tolerance_of_a_full_decode(side, draft_px):
    """At 380 px stored, an 800 px photo decodes at 1/2 scale (400 >= 380), a 1500 px one at
    1/2 too (1/4 would be 375 < 380); 740 px cannot be halved. The stored pixels differ from
    a full decode resized the same way by less than storing them as JPEG loses anyway."""
    data = _photo(side)
    assert decode_image(data, draft_side=380).size == (draft_px, draft_px)
    jpeg, w, h, ours = normalise_image(data, max_side=380, keep_pixels=True)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    err = np.abs(ours.astype(np.int16) - np.asarray(full, np.int16))
    jpeg_loss = np.abs(load_rgb(jpeg).astype(np.int16) - ours)
    assert err.mean() < jpeg_loss.mean() and np.percentile(err, 99) <= np.percentile(jpeg_loss, 99)
    assert err.mean() < 1.5  # measured: 1.03 at 800 px, 0.60 at 1500 px (INTER_AREA vs LANCZOS)
