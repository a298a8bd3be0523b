"""The published ImageNet weights file of each --arch (torchvision's IMAGENET1K_V1), without torch.

Why a table beside torchvision's own enums: the client has no torch, yet it fetches these files
itself for the jobs that cannot (a Docker container has no network, an Azure workspace may have no
outbound access). torch hub looks for <hub dir>/checkpoints/<file name> before downloading, so the
file the client puts there under the same name is the one torchvision's loader then uses.
tests/test_weights.py checks every entry against the installed torchvision's enum URL, so this
table cannot drift from what the job loads.

What a fetched file is checked against: its whole sha256 where a public source states it (named
beside it; PyTorch publishes only the 8 hex digits in the file name), else those 8 digits, as
torch hub checks them. Either way the job reads the file with torch.load(weights_only=True), so a
file that is not what it claims to be can fail the run but not run code.
"""
import re
from typing import NamedTuple

BASE_URL = "https://download.pytorch.org/models/"

# torch hub's naming convention (torch.hub.HASH_REGEX): name-<hex>.pth, <hex> starting the sha256
_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")


class PublishedWeights(NamedTuple):
    enum: str       # torchvision.models.<enum>.IMAGENET1K_V1
    file_name: str  # the last part of its URL, and its name in the torch hub cache
    sha256: str = None  # the file's whole sha256, only where a public source states it


# The whole digests of the four ResNets are those pinned by zspacelabs/bunsen, a Rust library
# that downloads torchvision's files and checks them by sha256 (the torchvision rows of the
# WELL_KNOWN_TABLE of its kits::bimm::resnet module); other public projects that pin resnet18,
# resnet34 and resnet50 by their whole sha256 state the same digests. No public statement was
# found for mobilenet_v3_large and efficientnet_b0: their files are checked by the name's prefix.
IMAGENET1K_V1 = {
    "resnet50": PublishedWeights("ResNet50_Weights", "resnet50-0676ba61.pth",
                                 "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"),
    "resnet18": PublishedWeights("ResNet18_Weights", "resnet18-f37072fd.pth",
                                 "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"),
    "resnet34": PublishedWeights("ResNet34_Weights", "resnet34-b627a593.pth",
                                 "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"),
    "resnet101": PublishedWeights("ResNet101_Weights", "resnet101-63fe2227.pth",
                                  "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a"),
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


def expected_sha256(file_name):
    """What the sha256 (hex) of the file `file_name` must start with: the whole digest where the
    table holds one, else the prefix its name carries."""
    known = [p.sha256 for p in IMAGENET1K_V1.values() if p.file_name == file_name and p.sha256]
    return known[0] if known else sha256_prefix(file_name)
