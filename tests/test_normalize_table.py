"""imaging.normalize looks pixels up in a table of the 256 values per channel: its floats must be
the training job's arithmetic to the bit, for every value, channel and layout it is given."""
import numpy as np
import torch

from remote_scripts import imaging


def every_value_in_every_channel():
    """uint8 [16, 48, 3]: each channel holds all 256 values, in a different order per channel."""
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(768).reshape(16, 48) % 256 for _ in range(3)], axis=-1).astype(np.uint8)


def test_normalize_equals_the_per_pixel_arithmetic_of_training_to_the_bit():
    pixels = every_value_in_every_channel()
    for spec in (imaging.preprocess_spec(224), imaging.preprocess_spec(16, mean=(0.5, 0.1, 0.9), std=(0.3, 0.07, 1.3))):
        got = imaging.normalize(pixels, spec)
        assert got.dtype == np.float32 and got.shape == (3, 16, 48) and got.flags.c_contiguous
        # the training job's arithmetic (imagecache.Batches.normalize): in place, in torch, on the device
        mean, std = (torch.tensor(spec[k], dtype=torch.float32).view(3, 1, 1) for k in ("mean", "std"))
        expected = torch.from_numpy(pixels).permute(2, 0, 1).float().mul_(spec["scale"]).sub_(mean).div_(std)
        assert np.array_equal(got.view(np.uint32), expected.numpy().view(np.uint32))
        # and numpy's, element by element, as normalize computed it before the table
        arithmetic = (pixels.astype(np.float32) * np.float32(spec["scale"]) - np.asarray(spec["mean"], np.float32)) \
            / np.asarray(spec["std"], np.float32)
        assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(arithmetic.transpose(2, 0, 1)).view(np.uint32))


def test_normalize_takes_a_view_of_interleaved_pixels():
    """A crop of a larger array (not contiguous), as a cache row or a slice may be."""
    pixels = every_value_in_every_channel()
    spec = imaging.preprocess_spec(8)
    crop = pixels[2:10, 5:13]
    assert np.array_equal(imaging.normalize(crop, spec), imaging.normalize(crop.copy(), spec))
