"""Writes the bad-input corpus: every kind of broken or odd input a real dataset folder holds.

    corpus = make_corpus(root)                   # a folder-per-label tree: good images + every kind
    mistakes = make_config_mistakes(root)        # DATA paths that no job can train on
    data, message = make_unreadable_class(root)  # a class with no readable image
    data, names = make_non_utf8_class(root)      # a class of Latin-1 file names

Each kind is a `Kind` that says what it is, where it lies and what must happen to it:
- SKIPPED: listed by the scan, then unreadable when decoded; the job leaves it out and lists it in
  metrics.json's `skipped` with a reason, and the run goes on.
- TRAINED: odd but valid; decoded to RGB and trained on like any other image.
- IGNORED: not an image of the dataset at all (hidden, not an image, a folder without images, a
  symlinked folder that loops): the scan does not list it, so nothing else sees it.
- LEFT_OUT: a link whose real path lies outside DATA (a file, a class folder, a nested folder),
  to good images that would be trained on if followed: the scan does not list it but names it
  in Scan.skipped; the job lists it in metrics.json's `skipped`, pack and upload warn about it.
The configuration mistakes (DATA a file, DATA missing, one class, no images) are what the scan
refuses: one line, exit 2, before any job starts; a class whose every image is unreadable is
found by the job after decoding, which exits 2 with the same kind of line.

Why a generator instead of checked-in files: the broken files are made from valid ones by a
known cut (half a JPEG, one flipped checksum byte, a header that claims 100k x 100k pixels), so
each test knows exactly why a file must fail, and the corpus takes a few MB only while a test runs.
"""
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagegen import colour_of, make_dataset, picture, save_in_mode

SKIPPED, TRAINED, IGNORED, LEFT_OUT = "skipped", "trained", "ignored", "left out"

CLASSES = ("red", "sea side", "Écorce")  # a label with a space and one with a non-ASCII letter
GOOD_PER_CLASS = 8
GOOD_SIZE = 32
HUGE_SIZE = (8000, 6000)        # 48 megapixels: 144 MB as RGB if decoded in full
BOMB_SIDE = 100_000             # 10^10 pixels claimed: far over PIL's MAX_IMAGE_PIXELS
JPEG_BOMB_SIDE = 60_000         # JPEG's fields stop at 65535
NESTING_DEPTH = 12
EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6               # the orientation a phone held upright writes


@dataclass(frozen=True)
class Kind:
    """One kind of bad or odd input: its name, what must happen (SKIPPED, TRAINED, IGNORED, LEFT_OUT), the
    paths it put under the corpus root (str, as os.walk names them), and why, in words."""

    name: str
    expect: str
    paths: tuple
    why: str


@dataclass
class Corpus:
    """The corpus root, its kinds by name, and the good images the generator wrote around them."""

    root: Path
    kinds: dict
    good: list

    def paths(self, expect):
        return sorted(p for kind in self.kinds.values() if kind.expect == expect for p in kind.paths)


def permissions_enforced(folder):
    """False when this process reads a chmod 000 file anyway (root, CAP_DAC_OVERRIDE): then an
    "unreadable" file is readable, and the tests expect it trained on, not skipped."""
    probe = Path(folder) / ".permission-probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
        return False
    except PermissionError:
        return True
    finally:
        probe.chmod(0o600)
        probe.unlink()


def jpeg_bytes(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def png_bytes(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side):
    """A valid PNG whose header claims side x side RGB pixels; a few hundred bytes on disk."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + png_chunk(b"IEND", b""))


def jpeg_bomb(side, rng):
    """A small real JPEG whose frame header (SOF0) is patched to claim side x side pixels."""
    data = bytearray(jpeg_bytes(picture((128, 128, 128), 16, rng)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)  # after marker, length, precision
    return bytes(data)


def png_with_bad_checksum(rng):
    """A PNG whose IHDR checksum has one byte flipped: PIL checks it as it opens the file."""
    data = bytearray(png_bytes(picture((90, 90, 90), 16, rng)))
    data[29] ^= 0xFF  # signature 8 + length 4 + type 4 + IHDR data 13 = the first CRC byte
    return bytes(data)


def huge_jpeg(colour):
    """An 8000x6000 photo-like JPEG of a few MB: a smooth gradient in the class colour."""
    width, height = HUGE_SIZE
    ramp = np.linspace(0.6, 1.4, width // 50, dtype=np.float32)[None, :, None]
    waves = (1 + 0.15 * np.sin(np.arange(height // 50, dtype=np.float32) / 0.8))[:, None, None]
    pixels = np.clip(np.asarray(colour, dtype=np.float32)[None, None, :] * ramp * waves, 0, 255)
    small = Image.fromarray(pixels.astype(np.uint8))  # upscaled by PIL: 144 MB, not 576 MB of floats
    return jpeg_bytes(small.resize(HUGE_SIZE, Image.BILINEAR), quality=85)


def exif_rotated_jpeg(colour, rng):
    """A landscape JPEG (bright left half) tagged "rotate 90 degrees clockwise to view"."""
    image = picture(colour, GOOD_SIZE, rng).resize((GOOD_SIZE * 2, GOOD_SIZE))
    pixels = np.asarray(image).copy()
    pixels[:, :GOOD_SIZE] = 250
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    return jpeg_bytes(Image.fromarray(pixels), exif=exif)


def animated_gif(colour, rng):
    frames = [picture(tuple(min(255, c + shift) for c in colour), GOOD_SIZE, rng) for shift in (0, 40, 80)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def palette_png_with_transparency(colour, rng):
    image = picture(colour, GOOD_SIZE, rng).convert("P", palette=Image.ADAPTIVE, colors=16)
    return png_bytes(image, transparency=0)


def write(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_corpus(root):
    """Write good images in three label folders plus every kind of bad or odd input; a Corpus."""
    root = Path(root)
    make_dataset(root, classes=CLASSES, per_class=GOOD_PER_CLASS, size=GOOD_SIZE)
    good = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    rng = np.random.default_rng(9)
    red, sea, bark = CLASSES
    kinds = {}

    def add(name, expect, why, *paths):
        kinds[name] = Kind(name, expect, tuple(str(p) for p in paths), why)

    def image_kind(name, expect, why, relpath, data):
        write(root / relpath, data)
        add(name, expect, why, relpath)

    # Unreadable images: skipped and listed with a reason; the run goes on.
    sample = jpeg_bytes(picture(colour_of(red), 64, rng))
    image_kind("truncated_jpeg", SKIPPED, "half a JPEG: 'image file is truncated' on load",
               f"{red}/bad_truncated.jpg", sample[:len(sample) // 2])
    image_kind("zero_bytes", SKIPPED, "an empty file: PIL cannot identify it", f"{red}/bad_zero_bytes.jpg", b"")
    image_kind("html_as_jpg", SKIPPED, "a web page saved under a .jpg name (a failed download)",
               f"{sea}/bad_html.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    image_kind("png_bad_checksum", SKIPPED, "one flipped byte in the IHDR checksum: PIL's PNG reader rejects "
               "it, so the file is not identified",
               f"{sea}/bad_checksum.png", png_with_bad_checksum(rng))
    image_kind("png_bomb", SKIPPED, f"a PNG header claiming {BOMB_SIDE}x{BOMB_SIDE} pixels: refused by "
               "PIL's decompression-bomb check before any pixel is allocated", f"{bark}/bomb.png", png_bomb(BOMB_SIDE))
    image_kind("jpeg_bomb", SKIPPED, f"a JPEG frame header claiming {JPEG_BOMB_SIDE}x{JPEG_BOMB_SIDE} pixels: "
               "refused as a decompression bomb", f"{bark}/bomb.jpg", jpeg_bomb(JPEG_BOMB_SIDE, rng))
    loop = root / red / "loop.jpg"
    os.symlink("loop.jpg", loop)
    add("symlink_loop", SKIPPED, "a symlink to itself: 'Too many levels of symbolic links'", f"{red}/loop.jpg")
    os.symlink("gone.jpg", root / sea / "dangling.jpg")
    add("broken_symlink", SKIPPED, "a symlink whose target was deleted: 'No such file'", f"{sea}/dangling.jpg")
    locked = write(root / bark / "locked.png", png_bytes(picture(colour_of(bark), GOOD_SIZE, rng)))
    locked.chmod(0)
    if permissions_enforced(root):
        add("unreadable_permissions", SKIPPED, "chmod 000: 'Permission denied'", f"{bark}/locked.png")
    else:
        add("unreadable_permissions", TRAINED, "chmod 000, but this process (root) reads it anyway",
            f"{bark}/locked.png")

    # Odd but valid images: decoded to 8-bit RGB and trained on.
    image_kind("one_pixel", TRAINED, "a 1x1 image, scaled up to the input size",
               f"{red}/one_pixel.png", png_bytes(Image.new("RGB", (1, 1), colour_of(red))))
    save_in_mode(picture(colour_of(red), GOOD_SIZE, rng), "I;16", root / red / "sixteen_bit")
    add("sixteen_bit_png", TRAINED, "a 16-bit grayscale PNG (mode I;16): scaled, not clipped, to 8 bits",
        f"{red}/sixteen_bit.png")
    save_in_mode(picture(colour_of(sea), GOOD_SIZE, rng), "CMYK", root / sea / "cmyk")
    add("cmyk_jpeg", TRAINED, "a CMYK JPEG (print workflows): converted to RGB", f"{sea}/cmyk.jpg")
    image_kind("palette_png", TRAINED, "a 16-colour palette PNG with a transparent index: composited on white",
               f"{sea}/palette.png", palette_png_with_transparency(colour_of(sea), rng))
    image_kind("animated_gif", TRAINED, "a 3-frame animated GIF: its first frame is the image",
               f"{bark}/animated.gif", animated_gif(colour_of(bark), rng))
    image_kind("exif_rotated", TRAINED, "a JPEG with EXIF orientation 6: decoded as stored (the tag is not "
               "applied), by training and prediction alike", f"{red}/exif_rotated.jpg",
               exif_rotated_jpeg(colour_of(red), rng))
    image_kind("huge_jpeg", TRAINED, f"a {HUGE_SIZE[0]}x{HUGE_SIZE[1]} JPEG: decoded at 1/8 scale (JPEG draft), "
               "memory bounded", f"{bark}/huge.jpg", huge_jpeg(colour_of(bark)))
    write(root / sea / "LOUD.JPEG", jpeg_bytes(picture(colour_of(sea), GOOD_SIZE, rng)))
    write(root / sea / "SHOUT.PNG", png_bytes(picture(colour_of(sea), GOOD_SIZE, rng)))
    add("upper_case_extension", TRAINED, "extensions in upper case (.PNG, .JPEG) are images too",
        f"{sea}/LOUD.JPEG", f"{sea}/SHOUT.PNG")
    undecodable_name = os.path.join(os.fsencode(root / bark), b"caf\xe9-latin1.png")  # not UTF-8
    with open(undecodable_name, "wb") as f:
        f.write(png_bytes(picture(colour_of(bark), GOOD_SIZE, rng)))
    add("non_utf8_file_name", TRAINED, "a file name in Latin-1 bytes (an old archive): named with Python's "
        "surrogate escapes, read by its bytes", os.fsdecode(os.path.relpath(undecodable_name, os.fsencode(root))))
    deep = Path(red, *[f"level{i}" for i in range(NESTING_DEPTH)], "deep.jpg")
    image_kind("deeply_nested", TRAINED, f"an image {NESTING_DEPTH} folders below its label folder",
               deep, jpeg_bytes(picture(colour_of(red), GOOD_SIZE, rng)))
    twin = jpeg_bytes(picture(colour_of(sea), GOOD_SIZE, rng))
    write(root / sea / "twin.jpg", twin)
    write(root / bark / "twin.jpg", twin)
    add("same_image_two_labels", TRAINED, "one image, byte for byte, under two labels: both samples kept "
        "(the scan does not judge labels; packing warns)", f"{sea}/twin.jpg", f"{bark}/twin.jpg")

    # Not part of the dataset: never listed, never decoded, never uploaded.
    write(root / red / ".hidden.jpg", sample)
    write(root / red / ".thumbnails" / "thumb.jpg", sample)
    write(root / ".cache" / "x.jpg", sample)
    add("hidden_entries", IGNORED, "hidden files and folders (.DS_Store-style, .thumbnails, a hidden class)",
        f"{red}/.hidden.jpg", f"{red}/.thumbnails/thumb.jpg", ".cache/x.jpg")
    write(root / sea / "notes.txt", b"taken at low tide\n")
    write(root / sea / "metadata.json", b"{}\n")
    write(root / sea / "README", b"no extension\n")
    write(root / "stray.jpg", sample)
    add("non_image_files", IGNORED, "text, JSON and extension-less files beside the images, and an image at "
        "the top, outside every label folder", f"{sea}/notes.txt", f"{sea}/metadata.json", f"{sea}/README",
        "stray.jpg")
    write(root / "empty class" / "readme.txt", b"images to come\n")
    add("empty_class_folder", IGNORED, "a label folder without images: reported as empty, not a class",
        "empty class/readme.txt")
    os.symlink("..", root / bark / "parent-loop")
    add("folder_symlink_loop", IGNORED, "a symlinked folder pointing up the tree: not followed, so the walk ends",
        f"{bark}/parent-loop")

    # Links leading outside DATA, to good images: left out, listed, never read.
    outside = root.parent / f"{root.name}-outside"
    for name in ("secret.jpg", "fox/a.jpg", "fox/b.jpg", "more/c.jpg"):
        write(outside / name, jpeg_bytes(picture(colour_of("fox"), GOOD_SIZE, rng)))
    os.symlink(outside / "secret.jpg", root / red / "innocent.jpg")
    add("file_link_outside", LEFT_OUT, "an image name linked to a file outside DATA (cat/x.png -> /etc/passwd)",
        f"{red}/innocent.jpg")
    os.symlink(outside / "fox", root / "fox")
    add("class_folder_link_outside", LEFT_OUT, "a label folder linked to a folder outside DATA: no class",
        "fox")
    os.symlink(os.path.relpath(outside / "more", root / sea), root / sea / "more")
    add("nested_folder_link_outside", LEFT_OUT, "a folder below a label, linked (relative, climbing out) to a "
        "folder outside DATA", f"{sea}/more")
    return Corpus(root, kinds, good)


def make_unreadable_class(root):
    """(DATA, the words of its error) for a class whose every image is unreadable: the scan lists
    them, so only the job, after decoding, finds the class empty; it exits 2 with that reason."""
    root = Path(root)
    rng = np.random.default_rng(3)
    for i in range(4):
        write(root / "fine" / f"{i}.png", png_bytes(picture((0, 200, 0), 8, rng)))
        write(root / "broken" / f"{i}.jpg", b"" if i % 2 else b"<html></html>")
    return root, "class 'broken' has 0 usable image(s)"


def make_non_utf8_class(root):
    """DATA with a class whose three images all have Latin-1 names, so that one of them is sure to
    land in the test split (predictions.csv, the report); returns (DATA, those names as bytes)."""
    root = Path(root)
    rng = np.random.default_rng(4)
    for i in range(4):
        write(root / "plain" / f"{i}.png", png_bytes(picture((0, 0, 200), 8, rng)))
    names = [b"\xe9t\xe9-%d.png" % i for i in range(3)]
    folder = os.fsencode(root / "latin")
    os.makedirs(folder)
    for name in names:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(png_bytes(picture((200, 0, 0), 8, rng)))
    return root, names


def make_config_mistakes(root):
    """{name: (DATA path, the words the one-line error must hold)} for data no job can use."""
    root = Path(root)
    rng = np.random.default_rng(2)
    write(root / "a-file.jpg", jpeg_bytes(picture((10, 10, 10), 8, rng)))
    one = root / "one-class"
    for i in range(4):
        write(one / "only" / f"{i}.png", png_bytes(picture((200, 0, 0), 8, rng)))
    write(root / "no-images" / "a" / "notes.txt", b"x")
    write(root / "no-images" / "b" / ".hidden.png", b"x")
    return {
        "data_is_a_file": (root / "a-file.jpg", "data path is not a folder"),
        "data_missing": (root / "nowhere", "data folder not found"),
        "one_class_only": (one, "need at least 2 classes with images, found 1 (only)"),
        "no_images": (root / "no-images", "no images found"),
    }
