"""Decoding by content: every awkward file becomes 8-bit RGB or a BadImage with the reason."""

import io

import numpy as np
import pytest
from PIL import Image

from petlab.prepare import images
from petlab.prepare.synthetic import AWKWARD_IMAGES, write_awkward_image

SOURCE = {  # what the content really is, whatever the .jpg name says
    "png_named_jpg": ("PNG", "RGB"),
    "gif_named_jpg": ("GIF", "P"),
    "cmyk_jpeg": ("JPEG", "CMYK"),
    "grayscale_jpeg": ("JPEG", "L"),
    "png_16bit": ("PNG", "I;16"),
    "rgba_png": ("PNG", "RGBA"),
    "palette_transparency_png": ("PNG", "P"),
}
REASON = {
    "zero_bytes": "empty file",
    "truncated_jpeg": "truncated",
    "not_an_image": "not an image",
    "few_pixels_wide": "too small",
}


@pytest.mark.parametrize("kind", [k for k, usable in AWKWARD_IMAGES.items() if usable])
def test_convertible_files_become_rgb(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    write_awkward_image(path, kind, size=(96, 72))
    decoded = images.decode(path)
    assert (decoded.source_format, decoded.source_mode) == SOURCE[kind]
    assert decoded.image.mode == "RGB" and decoded.image.size == (96, 72)
    # Re-encoding works and gives an RGB JPEG, which is what prepare writes.
    with Image.open(io.BytesIO(images.encode_jpeg(decoded.image, 90))) as again:
        assert (again.format, again.mode) == ("JPEG", "RGB")


@pytest.mark.parametrize("kind", [k for k, usable in AWKWARD_IMAGES.items() if not usable])
def test_unusable_files_are_refused_with_the_reason(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    write_awkward_image(path, kind)
    with pytest.raises(images.BadImage, match=REASON[kind]) as err:
        images.decode(path)
    assert "0x" not in str(err.value)  # reasons end up in metrics files: no memory addresses


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgb = images.to_rgb(rgba)
    assert rgb.getpixel((5, 5)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (255, 0, 0)


def test_palette_transparency_is_composited_over_white():
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    rgb = images.to_rgb(palette)
    assert rgb.getpixel((5, 5)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (0, 255, 0)


def test_16_bit_is_scaled_not_clipped():
    ramp = Image.fromarray(np.array([[0, 32768, 65535]] * 3, dtype=np.uint16))
    assert ramp.mode == "I;16"
    values = np.asarray(images.to_rgb(ramp))[0, :, 0]
    assert values.tolist() == [0, 128, 255]


def test_cmyk_keeps_its_colour(tmp_path):
    Image.new("RGB", (32, 32), (200, 30, 30)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    r, g, b = np.asarray(images.decode(tmp_path / "cmyk.jpg").image).reshape(-1, 3).mean(0)
    assert r > 150 and g < 80 and b < 80  # still red, not inverted


def oriented_jpeg(path, orientation: int, size=(60, 20)) -> None:
    """A wide JPEG, red on the left half, tagged with an EXIF orientation (as phones save photos)."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)


# orientation -> (size once upright, where the red half ends up)
ORIENTATIONS = {
    1: ((60, 20), "left"),
    2: ((60, 20), "right"),
    3: ((60, 20), "right"),
    4: ((60, 20), "left"),
    5: ((20, 60), "top"),
    6: ((20, 60), "top"),
    7: ((20, 60), "bottom"),
    8: ((20, 60), "bottom"),
    9: ((60, 20), "left"),
}  # 9 is outside the standard: ignored, like viewers do


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_orientation_is_applied_and_reported(tmp_path, orientation):
    oriented_jpeg(tmp_path / "photo.jpg", orientation)
    decoded = images.decode(tmp_path / "photo.jpg")
    size, red = ORIENTATIONS[orientation]
    assert decoded.image.size == size
    assert decoded.exif_rotated == (2 <= orientation <= 8)
    w, h = size
    probe = {"left": (2, h // 2), "right": (w - 3, h // 2), "top": (w // 2, 2), "bottom": (w // 2, h - 3)}[red]
    r, g, b = decoded.image.getpixel(probe)
    assert r > 200 and b < 60


@pytest.mark.parametrize(
    "size, fitted",
    [((70000, 16), (65500, 15)), ((16, 66000), (16, 65500)), ((65500, 9), (65500, 9))],
    ids=["too_wide", "too_tall", "at_the_limit"],
)
def test_an_image_too_large_for_jpeg_is_fitted(size, fitted):
    image = Image.new("RGB", size, (10, 200, 30))
    out = images.fit_jpeg(image)
    assert out.size == fitted
    with Image.open(io.BytesIO(images.encode_jpeg(out, 90))) as again:
        assert again.size == fitted


def test_an_image_too_thin_to_fit_jpeg_is_refused():
    with pytest.raises(images.BadImage, match=r"too elongated for JPEG \(200000x9 px"):
        images.fit_jpeg(Image.new("RGB", (200000, 9)))
