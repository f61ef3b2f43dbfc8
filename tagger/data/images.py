"""Safe image decoding for ingest.

Pure functions over bytes: no file or network I/O. `decode_image` turns whatever a
merchant uploaded into an upright 8-bit RGB image or raises `ImageError` with a
short reason code for the rejects table; `normalise_image` re-encodes it as a
bounded-size baseline JPEG for storage; `load_rgb` is the loader's hot path over
those stored JPEGs; `fit_square` is the model's eval input made from such an image.

One decode per image: `normalise_image(..., keep_pixels=True)` also returns the resized
pixels it encoded, so a nightly run can make the model's input from them without
decoding the stored JPEG again (tagger.nightly). JPEGs are decoded at 1/2, 1/4 or 1/8
scale (libjpeg's DCT scaling, `Image.draft`) whenever that still leaves the longest side
>= the stored size: decoding fewer pixels and resizing from fewer is most of the gain.
"""

from __future__ import annotations

import functools
import io
import logging
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from tagger.config import IngestConfig

logger = logging.getLogger(__name__)

# Decompression-bomb guard on the declared width*height: one value, IngestConfig.max_pixels's
# default (the config is the layer below; an ingest passes its configured value).
DEFAULT_MAX_PIXELS: int = IngestConfig.model_fields["max_pixels"].default
DEFAULT_MIN_SIDE = 8  # smaller images carry no usable signal

# Only formats that product photos actually arrive in. Pillow otherwise probes
# dozens of obscure decoders (some with no magic number, e.g. TGA) on every
# input, which lets junk bytes "decode" and widens the attack surface.
# (MPO, multi-picture JPEG from phones, is reached through the JPEG opener.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

_WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used. `reason` is a short code for the rejects table, `detail` a human sentence."""

    reason: str
    detail: str

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@functools.cache
def _open_formats() -> tuple[str, ...]:
    """ALLOWED_FORMATS this Pillow build can open (older builds lack AVIF; Image.open KeyErrors on unknown names)."""
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _has_image_magic(data: bytes) -> bool:
    """True if the bytes start like an image we accept (so a failure means corruption, not a wrong file)."""
    return (
        data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or data[4:12] in (b"ftypavif", b"ftypavis")
    )


def _looks_truncated(exc: BaseException) -> bool:
    """Pillow signals short/corrupt streams with a mix of exception types and messages."""
    if isinstance(exc, (EOFError, SyntaxError, zlib.error)):
        return True
    msg = str(exc).lower()
    return "truncat" in msg or "broken" in msg or "corrupt" in msg


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB, compositing transparency onto white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        # 16-bit greyscale ('I;16*') or 32-bit int ('I'): Pillow's own convert
        # clips at 255, turning almost every pixel white. Treat the range as
        # 16-bit and scale 0..65535 -> 0..255 with rounding.
        arr = np.asarray(img).astype(np.int64)
        grey = ((np.clip(arr, 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.has_transparency_data:
        # Covers RGBA/LA/PA, palette and greyscale tRNS keys. Models never see
        # alpha, and transparent pixels often hold black or garbage, so
        # flatten onto white like a storefront would render it.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (Adobe-inverted JPEGs are un-inverted by the decoder), L, 1, P, YCbCr...
    return img.convert("RGB")


def _apply_draft(img: ImageFile.ImageFile, draft_side: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the longest side stays >= draft_side."""
    w, h = img.size
    long_side = max(w, h)
    if draft_side >= long_side:
        return
    # Proportional request with the long side exact: draft() picks the largest
    # scale s with s <= min(w // rw, h // rh), and flooring the short side only
    # raises h // rh, so the long side stays the binding constraint.
    rw = max(1, w * draft_side // long_side)
    rh = max(1, h * draft_side // long_side)
    img.draft("RGB", (rw, rh))


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    draft_side: int | None = None,
) -> Image.Image:
    """Decode bytes to an upright RGB PIL image.

    EXIF orientation is applied, animations yield their first frame, transparency is
    composited on white, 16-bit and CMYK are converted to 8-bit RGB. With `draft_side`,
    JPEGs are decoded at a reduced scale whose longest side is still >= draft_side.

    The pixel limit is checked on the header-declared size before any pixel data is
    decoded. Pillow's global `Image.MAX_IMAGE_PIXELS` guard still runs inside
    `Image.open` as an outer bound; its DecompressionBombError is reported as 'too_large'.

    Raises ImageError with reason 'empty', 'not_an_image', 'too_large', 'too_small',
    'truncated' or 'decode_error'.
    """
    if not data:
        raise ImageError("empty", "The image data is empty (0 bytes).")
    img = _open(data)
    _check_declared_size(img, max_pixels, min_side)
    _load(img, draft_side)
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:
        # A malformed EXIF block should not cost us an otherwise good photo.
        logger.warning("Ignoring unreadable EXIF orientation (%s: %s)", type(exc).__name__, exc)
    try:
        return _to_rgb(img)
    except Exception as exc:
        raise ImageError("decode_error", f"Cannot convert {img.format} mode {img.mode} to RGB ({exc}).") from exc


def _open(data: bytes) -> Image.Image:
    """The image with its headers parsed and no pixel data decoded yet (load() does that)."""
    try:
        return Image.open(io.BytesIO(data), formats=_open_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", f"Image exceeds Pillow's decompression-bomb limit: {exc}") from exc
    except Exception as exc:
        if _has_image_magic(data) or _looks_truncated(exc):
            raise ImageError("truncated", f"Image header is truncated or corrupt ({type(exc).__name__}: {exc}).") from exc
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(
                "not_an_image",
                f"Data is not an image in a supported format ({', '.join(_open_formats())}).",
            ) from exc
        raise ImageError("decode_error", f"Could not open image ({type(exc).__name__}: {exc}).") from exc


def _check_declared_size(img: Image.Image, max_pixels: int, min_side: int) -> None:
    # Both checks use the declared size, so a bomb is rejected without allocating.
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError("too_large", f"Image declares {w}x{h} = {w * h} pixels, limit is {max_pixels}.")
    if min(w, h) < min_side:
        raise ImageError("too_small", f"Image is {w}x{h}; each side must be at least {min_side} px.")


def _load(img: Image.Image, draft_side: int | None) -> None:
    """Decode the pixels (first frame only for animations; LOAD_TRUNCATED_IMAGES stays off),
    at a reduced JPEG scale when `draft_side` allows."""
    try:
        if draft_side is not None and img.format in ("JPEG", "MPO"):
            _apply_draft(img, draft_side)
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", f"Image exceeds Pillow's decompression-bomb limit: {exc}") from exc
    except Exception as exc:
        if _looks_truncated(exc):
            raise ImageError("truncated", f"Image data is truncated or corrupt ({exc}).") from exc
        raise ImageError("decode_error", f"Could not decode {img.format} image ({type(exc).__name__}: {exc}).") from exc


def normalise_image(
    data: bytes,
    *,
    max_side: int,
    quality: int = 90,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    keep_pixels: bool = False,
) -> tuple[bytes, int, int] | tuple[bytes, int, int, np.ndarray]:
    """Decode, downscale so the longest side <= max_side (never upscale), re-encode as baseline RGB JPEG.

    Returns (jpeg_bytes, width, height), and with `keep_pixels` the RGB pixels that were
    encoded as a 4th item (uint8 [height, width, 3]: what a decode of the JPEG gives, up to
    JPEG's loss). Raises ImageError like `decode_image`.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    img = decode_image(data, max_pixels=max_pixels, min_side=min_side, draft_side=max_side)

    w, h = img.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # OpenCV's INTER_AREA (a box filter over each output pixel's footprint), not PIL's
        # LANCZOS: 1.6x less time for the decode + resize of an 800 px photo, and within a
        # JPEG's loss of LANCZOS (mean 1.0 vs q90's own 2.5 levels; benchmarks/decoders.py).
        # The model's own fit is INTER_AREA too (tagger.data.transforms).
        import cv2

        pixels = cv2.resize(np.asarray(img), size, interpolation=cv2.INTER_AREA)
        img = Image.fromarray(pixels)
    else:
        pixels = None

    out = io.BytesIO()
    # No exif/icc_profile passed on purpose: orientation is already applied, and a
    # stale Orientation tag would make viewers rotate the image a second time.
    img.save(out, format="JPEG", quality=quality, progressive=False, optimize=False)
    if keep_pixels:
        return out.getvalue(), img.width, img.height, pixels if pixels is not None else np.array(img)
    return out.getvalue(), img.width, img.height


def load_rgb(data: bytes) -> np.ndarray:
    """Decode stored (already normalised) JPEG bytes to a writable HxWx3 uint8 array."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "RGB":  # normalised data is always RGB; stay correct if not
            img = img.convert("RGB")
        # np.array (not asarray): asarray over Pillow's bytes is read-only, which
        # torch.from_numpy warns about and in-place augmentations trip over.
        return np.array(img)


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """The model's eval input of an RGB uint8 [H, W, 3] image: the longest side resized to
    `size` (cv2 INTER_AREA, aspect kept), then padded with white to size x size, centred.

    The same pixels as tagger.data.transforms.create_transforms(size, train=False) gives
    (tests/data/test_images.py checks it), without importing albumentations: scoring with
    ONNX Runtime runs on numpy and OpenCV alone."""
    import cv2

    h, w = image.shape[:2]
    scale = size / max(h, w)
    # albumentations' LongestMaxSize rounds each side with Python's round(); equal: no resize
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    if nh == size and nw == size:
        return image
    top, left = max(0, size - nh) // 2, max(0, size - nw) // 2
    out = np.full((max(size, nh), max(size, nw), 3), 255, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = image
    return out
