"""Writes small generated image datasets for the tests: real files, folder-per-label.

    make_dataset(root, classes=("red", "green", "blue"), per_class=12, size=32, corrupt=0, modes=False)

Each class has its own base colour plus noise, so even a briefly trained model separates them.
Files alternate PNG and JPEG, every third one sits in a nested folder, and one per class has an
upper-case extension (.JPG), as real datasets do. `corrupt=N` replaces N of the images (spread
over the classes) by unreadable files whose names contain "corrupt": zero bytes, a truncated
JPEG, text named .jpg. `modes=True` replaces a few images by grayscale, RGBA, palette, CMYK and
16-bit variants of the same picture.
"""
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200), "yellow": (220, 200, 40),
           "black": (20, 20, 20), "white": (235, 235, 235)}
CORRUPT_KINDS = ("zero_bytes", "truncated", "text")
MODES = ("L", "RGBA", "P", "CMYK", "I;16")


def colour_of(name):
    """The class's base colour: a named one, else one derived from the name."""
    if name in COLOURS:
        return COLOURS[name]
    digest = hashlib.sha256(name.encode()).digest()
    return tuple(40 + b % 180 for b in digest[:3])


def picture(colour, size, rng):
    """An RGB image of `colour` with noise and a lighter diagonal band (so it is not flat)."""
    arr = rng.normal(colour, 25, size=(size, size, 3))
    band = np.abs(np.subtract.outer(np.arange(size), np.arange(size))) < size // 6
    arr[band] += 40
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def corrupt_bytes(kind, size, rng):
    if kind == "zero_bytes":
        return b""
    if kind == "truncated":
        buffer = io.BytesIO()
        picture((128, 128, 128), max(size, 64), rng).save(buffer, "JPEG")
        return buffer.getvalue()[: len(buffer.getvalue()) // 2]
    return b"this is a text file, not a JPEG\n"


def save_in_mode(image, mode, path):
    """Save `image` converted to `mode` where the format can hold it; returns the path written."""
    if mode == "CMYK":
        path = path.with_suffix(".jpg")
        image.convert("CMYK").save(path, "JPEG")
    elif mode == "I;16":
        path = path.with_suffix(".png")
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(gray).save(path, "PNG")  # uint16 -> mode I;16
    elif mode == "RGBA":
        path = path.with_suffix(".png")
        rgba = image.convert("RGBA")
        alpha = np.full(image.size[::-1], 255, dtype=np.uint8)
        alpha[: image.size[1] // 4] = 0  # a transparent top quarter
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(path, "PNG")
    else:  # L, P
        path = path.with_suffix(".png")
        image.convert(mode).save(path, "PNG")
    return path


def make_dataset(root, classes=("red", "green", "blue"), per_class=12, size=32, corrupt=0, modes=False):
    """Write `per_class` files into root/<class>/ for each class and return root as a Path."""
    root = Path(root)
    rng = np.random.default_rng(len(classes) * 1000 + per_class)
    corrupt_slots = {(i % len(classes), per_class - 1 - i // len(classes)) for i in range(corrupt)}
    mode_slots = {(i % len(classes), 1 + i // len(classes)): m for i, m in enumerate(MODES)} if modes else {}
    kinds = iter(CORRUPT_KINDS * (corrupt // len(CORRUPT_KINDS) + 1))
    for c, name in enumerate(classes):
        folder = root / name
        (folder / "nested").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            where = folder / "nested" if i % 3 == 2 else folder
            if (c, i) in corrupt_slots:
                kind = next(kinds)
                (where / f"corrupt_{kind}_{i}.jpg").write_bytes(corrupt_bytes(kind, size, rng))
                continue
            image = picture(colour_of(name), size, rng)
            if (c, i) in mode_slots:
                save_in_mode(image, mode_slots[(c, i)], where / f"{name}_{i}_mode")
            elif i == 0:
                image.save(where / f"{name}_{i}.JPG", "JPEG")
            elif i % 2:
                image.save(where / f"{name}_{i}.png", "PNG")
            else:
                image.save(where / f"{name}_{i}.jpg", "JPEG", quality=90)
    return root


def readable(root, relpath):
    """True when the image decodes (what the job keeps), False for a corrupt one."""
    from remote_scripts import imaging

    try:
        imaging.load_rgb(os.path.join(str(root), relpath))
        return True
    except imaging.DECODE_ERRORS:
        return False
