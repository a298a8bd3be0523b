"""The published ImageNet weights file of each --arch (torchvision's IMAGENET1K_V1), without torch.

Why a table beside torchvision's own enums: the client has no torch, yet it fetches these files
itself for the jobs that cannot (a Docker container has no network, an Azure workspace may have no
outbound access). torch hub looks for <hub dir>/checkpoints/<file name> before downloading, so the
file the client puts there under the same name is the one torchvision's loader then uses.
tests/test_weights.py checks every entry against the installed torchvision's enum URL, so this
table cannot drift from what the job loads.
"""
import re
from typing import NamedTuple

BASE_URL = "https://download.pytorch.org/models/"

# torch hub's naming convention (torch.hub.HASH_REGEX): name-<hex>.pth, <hex> starting the sha256
_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")


class PublishedWeights(NamedTuple):
    enum: str       # torchvision.models.<enum>.IMAGENET1K_V1
    file_name: str  # the last part of its URL, and its name in the torch hub cache


IMAGENET1K_V1 = {
    "resnet50": PublishedWeights("ResNet50_Weights", "resnet50-0676ba61.pth"),
    "resnet18": PublishedWeights("ResNet18_Weights", "resnet18-f37072fd.pth"),
    "resnet34": PublishedWeights("ResNet34_Weights", "resnet34-b627a593.pth"),
    "resnet101": PublishedWeights("ResNet101_Weights", "resnet101-63fe2227.pth"),
    "mobilenet_v3_large": PublishedWeights("MobileNet_V3_Large_Weights", "mobilenet_v3_large-8738ca79.pth"),
    "efficientnet_b0": PublishedWeights("EfficientNet_B0_Weights", "efficientnet_b0_rwightman-7f5810bc.pth"),
}


def url(arch, base_url=BASE_URL):
    """Where the ImageNet weights file of `arch` is published (or mirrored, under `base_url`)."""
    return base_url.rstrip("/") + "/" + IMAGENET1K_V1[arch].file_name


def sha256_prefix(file_name):
    """The hex digits a weights file's sha256 starts with, as its torch hub name says."""
    match = _HASH_PREFIX.search(file_name)
    if match is None:
        raise ValueError(f"{file_name} does not follow torch hub's name-<sha256 prefix>.pth convention")
    return match.group(1)
