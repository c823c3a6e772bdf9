"""Decoding images by content, whatever their file extension says, into 8-bit RGB."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated JPEG must be an error, never a silently grey-padded picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False
MIN_SIDE = 8  # smaller images cannot survive a resize-and-crop meaningfully
JPEG_MAX_SIDE = 65500  # libjpeg's limit (JPEG_MAX_DIMENSION), just under the format's 16-bit 65535


class BadImage(Exception):
    """The file is not a usable image; the message says why."""


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB
    source_mode: str  # the mode before conversion (e.g. CMYK, L, RGBA, P, I;16)
    source_format: str  # what the content is (JPEG, PNG, GIF...), not what the name says
    exif_rotated: bool = False  # an EXIF orientation tag was applied (phone photos), as viewers do


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha over white, 16-bit scaled to 8-bit, CMYK via PIL's conversion."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        gray = ((array - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode(path: str | Path, draft_side: int | None = None) -> Decoded:
    """Open and fully decode `path` by content; raise BadImage with the reason if it cannot be used.

    `draft_side` lets the JPEG decoder scale down by a power of two while decoding
    (much faster for large photos) as long as the shorter side stays >= draft_side.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadImage(f"unreadable ({err.strerror})") from None
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        source_format = image.format or "unknown"
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF/PNG: the first frame is the picture
        if draft_side is not None and source_format == "JPEG":
            image.draft(image.mode, (draft_side, draft_side))
        image.load()
    except UnidentifiedImageError:  # its own message names an in-memory buffer, not the file
        raise BadImage("not an image (no format Pillow can read)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"cannot be decoded ({str(err) or type(err).__name__})") from None
    if min(image.size) < MIN_SIDE:
        raise BadImage(f"too small ({image.size[0]}x{image.size[1]} px; at least {MIN_SIDE} px a side)")
    source_mode = image.mode
    try:
        # 2..8 flip and/or rotate; 1 (upright) and values outside the standard's range change nothing.
        rotated = image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)
        if rotated:
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, TypeError) as err:  # a damaged EXIF block
        raise BadImage(f"cannot apply its EXIF orientation ({str(err) or type(err).__name__})") from None
    return Decoded(to_rgb(image), source_mode, source_format, exif_rotated=rotated)


def shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """Resize so the shorter side is at most `max_side`, keeping the aspect ratio."""
    if max_side is None or min(image.size) <= max_side:
        return image
    w, h = image.size
    scale = max_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def fit_jpeg(image: Image.Image) -> Image.Image:
    """Shrink an image whose longer side JPEG cannot store, keeping the aspect ratio (or BadImage if too thin)."""
    w, h = image.size
    if max(w, h) <= JPEG_MAX_SIDE:
        return image
    scale = JPEG_MAX_SIDE / max(w, h)
    size = (min(JPEG_MAX_SIDE, round(w * scale)), min(JPEG_MAX_SIDE, round(h * scale)))
    if min(size) < MIN_SIDE:
        raise BadImage(f"too elongated for JPEG ({w}x{h} px: fitting {JPEG_MAX_SIDE} px leaves under {MIN_SIDE} px)")
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()
