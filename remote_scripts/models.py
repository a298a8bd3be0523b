"""Backbones, initial weights and the classifier head of the training job (torch, torchvision).

A model is Classifier(backbone, head): a torchvision network whose last nn.Linear (the ImageNet
classifier) is an Identity, so it outputs features, followed by a new nn.Linear for our classes.
The same split serves the three modes: `linear` and `head` freeze the backbone, `full` trains
both. Works with torchvision >= 0.14 (the `weights=` enums exist since 0.13).
"""
import functools
import io
import os
import pickle
import re

import torch
import torch.nn as nn
import torchvision

from .atomic import write_atomically
from .weights_catalog import IMAGENET1K_V1, expected_sha256, url

# --arch choices and the torchvision weights enum of each, from the torch-free catalogue the client
# fetches the same files with. IMAGENET1K_V1 exists for all six, and its plain cross-entropy
# training also gives the better frozen features (Kornblith et al. 2021,
# shared/notes/training-performance.md section 1).
ARCHS = {arch: published.enum for arch, published in IMAGENET1K_V1.items()}


class WeightsError(ValueError):
    """--weights cannot be used: the job exits 2 with this message."""


def one_line(text, limit=160):
    """Exception text fit for the job's one-line error: colour codes and line breaks removed.

    torch's loader and urllib put multi-line explanations, some with ANSI colours, in their
    messages; the client shows the job's error in a single line.
    """
    return " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split())[:limit]


class Standardize(nn.Module):
    """(x - mean) / std with statistics of the training features: the linear head's input scaling."""

    def __init__(self, dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features):
        """Set the statistics from training features [n, dim].

        The epsilon is relative: a dimension that is (nearly) constant on the training images
        must not turn into a huge input when it does vary on a new image.
        """
        variance = features.var(0, unbiased=False)
        self.mean.copy_(features.mean(0))
        self.std.copy_(torch.sqrt(variance + 0.01 * variance.mean() + 1e-12))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


class UnsafeFile(pickle.UnpicklingError):
    """A file holds more than tensors and plain values: it was not unpickled (str: why, one line)."""


def torch_load(path, own=False):
    """torch.load with weights_only=True: tensors and plain values, never an object of the file's
    choosing, so a hostile file cannot run code here. UnsafeFile when the file holds more.

    The one exception: `own` files (the job's checkpoints and cached features, in --checkpoint-dir)
    on a torch whose safe loader cannot read them. torch 1.13's reads no Python float, and a
    checkpoint cannot do without floats (the optimizer's lr, betas and eps, the loss history), so
    there they are fully unpickled: on torch 1.13 (the offline Docker image) the checkpoint folder
    must be one that only the job's user can write. With torch >= 2 they load safely or not at all.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if own and not safe_loader_reads_floats():
            return torch.load(path, map_location="cpu", weights_only=False)
        # torch >= 2.4 explains the option of an unsafe load at length; the cause comes last
        raise UnsafeFile(one_line(str(exc).rpartition("WeightsUnpickler error:")[2])) from None


@functools.lru_cache(maxsize=None)
def safe_loader_reads_floats():
    """Whether this torch's weights_only loader reads a Python float (torch >= 2.0 does)."""
    buffer = io.BytesIO()
    torch.save({"lr": 0.5}, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError:
        return False
    return True


def imagenet_weights_file(arch):
    """The path of `arch`'s published ImageNet weights in the torch hub cache, downloaded first if
    missing (the file the client may have put there under the same name).

    The download goes to a temporary file and is kept only if its sha256 is the published one
    (weights_catalog.expected_sha256: the whole digest where known, else the name's prefix).
    """
    path = hub_cache_path(arch)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, lambda tmp: _download(url(arch), tmp, IMAGENET1K_V1[arch].file_name))
    return path


def hub_cache_path(arch):
    return os.path.join(torch.hub.get_dir(), "checkpoints", IMAGENET1K_V1[arch].file_name)


def _download(source, tmp, file_name):
    """torch hub's download of `source` into `tmp`, which hashes the file as it arrives and checks
    its sha256 against the published one: the whole digest where the catalogue has one, else the
    name's prefix (download_url_to_file compares as many leading digits as it is given)."""
    torch.hub.download_url_to_file(source, tmp, hash_prefix=expected_sha256(file_name), progress=False)


def load_weights(arch, weights):
    """The state_dict named by --weights (imagenet | none | PATH); None for `none`.

    Both files load with weights_only=True (torch_load): the published file may come from a
    mirror or a cache another user filled, and a PATH from anywhere.
    """
    if weights == "none":
        return None
    if weights == "imagenet":
        try:
            path = imagenet_weights_file(arch)
        except Exception as exc:  # offline, a proxy, a truncated download: all the same to the user
            raise WeightsError(
                f"cannot fetch the ImageNet weights for {arch} from {url(arch)} "
                f"({type(exc).__name__}: {one_line(str(exc), 120)}). Offline? Use --weights none to train from "
                f"random initialization, or --weights PATH with a state_dict file (or put that file at "
                f"{hub_cache_path(arch)})")
        return _state_dict(path, path)
    if not os.path.isfile(weights):
        raise WeightsError(f"--weights {weights}: no such file (use imagenet, none or a state_dict path)")
    return _state_dict(weights, f"--weights {weights}")


def _state_dict(path, source):
    """The state_dict in the file `path` (named `source` in errors), "module." prefixes removed."""
    try:
        state = torch_load(path)
    except UnsafeFile as exc:  # another kind of file, or a pickle of more than tensors
        raise WeightsError(f"{source}: not a PyTorch weights file of plain tensors ({exc}); "
                           "it was not loaded")
    except (KeyError, EOFError) as exc:  # what torch.load raises on a file of another kind
        raise WeightsError(f"{source}: not a PyTorch weights file") from exc
    except Exception as exc:
        raise WeightsError(f"{source}: not a loadable state_dict ({type(exc).__name__}: "
                           f"{one_line(str(exc))})")
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"{source}: expected a state_dict (a dict of tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def last_linear(net):
    """(qualified name, parent module, attribute, module) of the network's last nn.Linear."""
    name = [n for n, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    return name, parent, attr, getattr(parent, attr)


def build_model(arch, num_classes, state=None, standardize=False, source="", warn=print):
    """Classifier(`arch` backbone with `state` loaded, new Linear head [behind Standardize]).

    The ImageNet classifier of `state` is dropped (it is replaced anyway), so a full torchvision
    state_dict and a backbone-only one both load. Raises WeightsError for another network's weights.
    """
    net = getattr(torchvision.models, arch)(weights=None)
    name, parent, attr, classifier = last_linear(net)
    if state is not None:
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in usable and not k.startswith(name + ".")]
        if len(missing) > len(own) // 2:
            raise WeightsError(f"--weights {source}: these are not {arch} weights ({len(missing)} of "
                               f"{len(own)} tensors missing or of another shape)")
        if missing:
            warn(f"{len(missing)} backbone tensors are not in --weights {source} and stay randomly "
                 f"initialized, e.g. {missing[0]}")
        net.load_state_dict(usable, strict=False)
    setattr(parent, attr, nn.Identity())
    head = nn.Linear(classifier.in_features, num_classes)
    if standardize:
        head = nn.Sequential(Standardize(classifier.in_features), head)
    return Classifier(net, head)


def cam_unavailable(backbone):
    """None when the backbone's features are the global average of its last convolutional
    feature map (the ResNets, EfficientNet), so the linear head applied at each position of that
    map is the class activation map; else why the model can have none (one line).

    build_model replaced the network's last nn.Linear; one left (MobileNetV3's Linear and
    Hardswish after the pooling) makes the head non-linear in the feature map.
    """
    hidden = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
    if hidden:
        return (f"no class activation map: the backbone's {hidden[0]} (a Linear layer and its activation) "
                "lies between the pooled feature map and the head, so the head is not linear in it")
    return None


def freeze_backbone(model):
    for p in model.backbone.parameters():
        p.requires_grad_(False)


def set_train_mode(model, trains_backbone):
    """Training mode for what learns: everything, or only the head while the frozen backbone stays
    in eval mode (BatchNorm statistics and dropout fixed, as at export)."""
    if trains_backbone:
        model.train()
    else:
        model.eval()
        model.head.train()
