"""Image decoding and preprocessing shared by training, ONNX prediction and evaluation.

The training job caches `decode_pixels` and `orchestrate predict` calls `preprocess_file`, the
same decode followed by the same normalization, so a model sees byte-for-byte the same input at
test time in PyTorch and in ONNX Runtime. The parameters travel in the ONNX metadata (see
PREPROCESS_KEY), which is what makes the file self-describing.
"""
import re

import numpy as np
from PIL import Image

from .image_names import IMAGE_EXTENSIONS, is_image_name  # noqa: F401 (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ONNX metadata keys (model.onnx's metadata_props), read by orchestrator.inference.
LABELS_KEY = "orchestrate.labels"          # JSON list of label names, index order
PREPROCESS_KEY = "orchestrate.preprocess"  # JSON, see preprocess_spec()
INPUT_NAME = "image"                       # float32 [batch, 3, size, size]
OUTPUT_NAME = "probabilities"              # float32 [batch, classes], softmax applied
CAM_NAME = "cam"                           # float32 [batch, classes, h, w]: class activation maps, optional
CAM_KEY = "orchestrate.cam"                # JSON {"output": "cam"} or {"output": null, "why": "..."}

# What decoding can raise for a file that is not a readable image: truncated data, zero
# bytes, a text file named .jpg, a decompression bomb.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def describe_decode_error(exc, name=None):
    """The one-line reason recorded for an unreadable image (metrics.json, predict, evaluate).

    name: for an image decoded from memory (an upload), the words that replace PIL's repr of the
    buffer (`cannot identify image file <_io.BytesIO object at 0x7f...>` says nothing and differs
    every time). Without it the message is exactly the job's.
    """
    text = str(exc)
    if name is not None:
        text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", lambda _: name, text)
    return f"{type(exc).__name__}: {text}"[:200]


def load_rgb(path, target_size=None):
    """Decode any supported image to 8-bit RGB.

    Grayscale, palette, CMYK are converted; transparent pixels are composited on white (a plain
    convert would turn them black); 16-bit and float images are scaled, not clipped, to 8 bits.
    target_size, (width, height) the image will be resized to: a JPEG at least twice as large is
    decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (PIL's draft), never below
    target_size, which skips most of the work for a photo far larger than the model's input
    (3000x2000 to 224: 375x250, about 3x faster). The pixels differ slightly from a full decode,
    so training and prediction must both pass it (decode_pixels does, when the spec says so).
    Raises one of DECODE_ERRORS for unreadable files.
    """
    with Image.open(path) as im:
        if target_size:
            im.draft("RGB", tuple(target_size))
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
    """The preprocessing description stored in the ONNX metadata.

    jpeg_draft: JPEGs are decoded at reduced scale first (load_rgb's target_size). Models made
    before it existed lack the key and are fed full decodes, as they were trained.
    """
    return {
        "size": [int(size), int(size)],
        "jpeg_draft": True,
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
    normalize does below for one image.
    """
    height, width = spec["size"]
    return np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.uint8)


def decode_pixels(path, spec):
    """Image file -> uint8 array [H, W, 3] at the spec's size: what the training job caches."""
    height, width = spec["size"]
    return resize(load_rgb(path, (width, height) if spec.get("jpeg_draft") else None), spec)


def normalize(pixels, spec):
    """uint8 array [H, W, 3] -> float32 array [3, H, W], scaled and standardized as in `spec`.

    Why a table: a uint8 pixel has 256 values, so the float32 arithmetic (times scale, minus
    mean, over std) is done on those 256 per channel and the image is looked up in it, which
    gives bit for bit the same floats as doing it on every pixel, at a fifth of the cost: the
    arithmetic took 0.8-1.0 ms for a 224 px input, twice the JPEG decode of a 400x300 photo.
    """
    values = np.arange(256, dtype=np.float32)[:, None] * np.float32(spec["scale"])
    table = (values - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    table = np.ascontiguousarray(table.T)
    out = np.empty((3,) + pixels.shape[:2], dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def preprocess_file(path, spec):
    """Image file -> the model's float32 input [3, H, W]: what prediction and evaluation feed."""
    return normalize(decode_pixels(path, spec), spec)


def preprocess(image, spec):
    """An already decoded PIL RGB image -> float32 array [3, H, W], as described by `spec`.

    For images held in memory; a file given by path goes through preprocess_file, whose reduced
    JPEG decode is what a model made with a jpeg_draft spec was trained on.
    """
    return normalize(resize(image, spec), spec)
