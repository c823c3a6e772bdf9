"""A small generated dataset in the official Oxford-IIIT Pet on-disk layout, for tests and benchmarks.

Each class gets its own colour and shape, so a model can learn it; the files include the
awkward cases of the real archive (grayscale, an RGBA PNG named .jpg, a CMYK JPEG).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# (file-name prefix, species: 1 cat / 2 dog); upper-case prefixes are cats, as in the real archive.
BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("beagle", 2), ("Sphynx", 1),
          ("pug", 2), ("Persian", 1), ("shiba_inu", 2)]


def class_image(label: int, num_classes: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    noise = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    r, g, b = (int(255 * c) for c in colorsys.hsv_to_rgb(label / num_classes, 0.9, 0.95))
    cx, cy = rng.integers(w // 3, 2 * w // 3), rng.integers(h // 3, 2 * h // 3)
    s = int(min(w, h) * rng.uniform(0.2, 0.35))
    box = [cx - s, cy - s, cx + s, cy + s]
    if label % 3 == 0:
        draw.ellipse(box, fill=(r, g, b))
    elif label % 3 == 1:
        draw.rectangle(box, fill=(r, g, b))
    else:
        draw.polygon([(cx, cy - s), (cx - s, cy + s), (cx + s, cy + s)], fill=(r, g, b))
    return image


def make_fake_pets(root: str | Path, num_classes: int = 4, trainval_per_class: int = 10, test_per_class: int = 5,
                   size_range: tuple[int, int] = (96, 160), seed: int = 0, awkward_files: bool = True) -> Path:
    """Write <root>/images/*.jpg and <root>/annotations/{trainval,test}.txt; return root."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = {"trainval": [], "test": []}
    for label in range(num_classes):
        prefix, species = BREEDS[label % len(BREEDS)]
        if label >= len(BREEDS):
            prefix = f"{prefix}_{label}"
        for i in range(trainval_per_class + test_per_class):
            image_id = f"{prefix}_{i + 1}"
            size = tuple(int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
            class_image(label, num_classes, rng, size).save(root / "images" / f"{image_id}.jpg", quality=92)
            split = "trainval" if i < trainval_per_class else "test"
            lines[split].append(f"{image_id} {label + 1} {species} {i + 1}")
    if awkward_files:
        first = [line.split()[0] for line in lines["trainval"][::trainval_per_class]]
        _rewrite(root / "images" / f"{first[0]}.jpg", "L", "JPEG")  # grayscale
        _rewrite(root / "images" / f"{first[1 % len(first)]}.jpg", "RGBA", "PNG")  # RGBA PNG named .jpg
        _rewrite(root / "images" / f"{first[2 % len(first)]}.jpg", "CMYK", "JPEG")  # CMYK JPEG
    for split, split_lines in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    return root


def _rewrite(path: Path, mode: str, fmt: str) -> None:
    with Image.open(path) as image:
        converted = image.convert(mode)
    converted.save(path, format=fmt)


# Every kind of file a real image folder can hold, and whether prepare can use it (True: converted to RGB).
AWKWARD_IMAGES = {
    "zero_bytes": False,
    "truncated_jpeg": False,
    "not_an_image": False,
    "few_pixels_wide": False,
    "png_named_jpg": True,
    "gif_named_jpg": True,
    "cmyk_jpeg": True,
    "grayscale_jpeg": True,
    "png_16bit": True,
    "rgba_png": True,
    "palette_transparency_png": True,
}


def write_awkward_image(path: str | Path, kind: str, size: tuple[int, int] = (96, 72), seed: int = 0) -> None:
    """Write one of AWKWARD_IMAGES to `path` (whatever its extension says)."""
    path = Path(path)
    w, h = size
    rgb = class_image(seed % 3, 3, np.random.default_rng(seed), size)
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        rgb.save(path, format="JPEG", quality=92)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not_an_image":
        path.write_text("<html>404 Not Found</html>\n")
    elif kind == "few_pixels_wide":
        rgb.resize((3, h)).save(path, format="JPEG")
    elif kind == "png_named_jpg":
        rgb.save(path, format="PNG")
    elif kind == "gif_named_jpg":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, format="GIF")
    elif kind == "cmyk_jpeg":
        rgb.convert("CMYK").save(path, format="JPEG")
    elif kind == "grayscale_jpeg":
        rgb.convert("L").save(path, format="JPEG")
    elif kind == "png_16bit":
        ramp = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
        Image.fromarray(ramp).save(path, format="PNG")
    elif kind == "rgba_png":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(size))
        rgba.save(path, format="PNG")
    elif kind == "palette_transparency_png":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, format="PNG", transparency=0)
    else:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(AWKWARD_IMAGES)})")
