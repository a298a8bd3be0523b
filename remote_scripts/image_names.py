"""Which file names are images: a module without numpy or Pillow, so that scanning a folder (the
client's `data pack` / `data upload`, a re-upload that sends nothing) does not pay for their
imports (~0.4 s). imaging.py re-exports both names."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def is_image_name(name):
    """True for a visible file whose extension (any case) is an image extension."""
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS
