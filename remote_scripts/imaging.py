"""Image decoding and preprocessing shared by training, ONNX prediction and evaluation.

The training job (eval transform) and `orchestrate predict` both call `preprocess`, so a model
sees byte-for-byte the same input at test time in PyTorch and in ONNX Runtime. The parameters
travel in the ONNX metadata (see PREPROCESS_KEY), which is what makes the file self-describing.
"""
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ONNX metadata keys (model.onnx's metadata_props), read by orchestrator.inference.
LABELS_KEY = "orchestrate.labels"          # JSON list of label names, index order
PREPROCESS_KEY = "orchestrate.preprocess"  # JSON, see preprocess_spec()
INPUT_NAME = "image"                       # float32 [batch, 3, size, size]
OUTPUT_NAME = "probabilities"              # float32 [batch, classes], softmax applied

# What decoding can raise for a file that is not a readable image: truncated data, zero
# bytes, a text file named .jpg, a decompression bomb.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def describe_decode_error(exc):
    """The one-line reason recorded for an unreadable image (metrics.json, predict, evaluate)."""
    return f"{type(exc).__name__}: {exc}"[:200]


def is_image_name(name):
    """True for a visible file whose extension (any case) is an image extension."""
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def load_rgb(path):
    """Decode any supported image to 8-bit RGB.

    Grayscale, palette, CMYK are converted; transparent pixels are composited on white (a plain
    convert would turn them black); 16-bit and float images are scaled, not clipped, to 8 bits.
    Raises one of DECODE_ERRORS for unreadable files.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I;16") or im.mode in ("I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            top = 65535.0 if (im.mode.startswith("I;16") or arr.max() > 255) else 255.0
            arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
            return Image.fromarray(arr, "L").convert("RGB")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def preprocess_spec(size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The preprocessing description stored in the ONNX metadata."""
    return {
        "size": [int(size), int(size)],
        "resize": "bilinear",
        "scale": 1.0 / 255.0,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "channel_order": "RGB",
        "layout": "NCHW",
    }


def resize(image, spec):
    """PIL RGB image -> uint8 array [H, W, 3] at the spec's size: the first half of preprocess.

    The training job caches these pixels and normalizes whole batches on its device, exactly as
    preprocess does below for one image.
    """
    height, width = spec["size"]
    return np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def preprocess(image, spec):
    """PIL RGB image -> float32 array [3, H, W], as described by `spec`."""
    arr = resize(image, spec).astype(np.float32) * np.float32(spec["scale"])
    arr = (arr - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
