"""The three --mode values: what each trains and freezes, and how its batches reach the model.

linear: the frozen backbone's features are computed once (featurize.py) and a linear head behind a
fitted Standardize layer trains on them; head: the frozen backbone sees augmented images every
epoch and only the head learns; full: the whole network is fine-tuned.
"""
from dataclasses import dataclass

import torch

from .imagecache import augment


@dataclass(frozen=True)
class Mode:
    """What one --mode trains, what it freezes and how its images reach the model."""
    name: str
    trains_backbone: bool   # the whole network learns (else only the new head; the backbone is frozen)
    cached_features: bool   # the frozen backbone's features are computed once and the head trains on
                            # them, behind a Standardize layer fitted to the training features
    augments: bool          # random crops and flips every epoch (cached features have none)


MODES = {
    "linear": Mode("linear", trains_backbone=False, cached_features=True, augments=False),
    "head": Mode("head", trains_backbone=False, cached_features=False, augments=True),
    "full": Mode("full", trains_backbone=True, cached_features=False, augments=True),
}


class Forward:
    """Batches of dataset indices -> logits, the way this mode feeds its model.

    Cached features go straight into the head; images come from the decoded cache (gathered by a
    background thread, imagecache.Batches.prefetch), are augmented when training (head and full
    modes), normalized, then run through the backbone (without gradients when it is frozen).
    `trained` is what the optimizer steps: DDP's wrapper when distributed.
    """

    def __init__(self, mode, model, trained, batches, features, precision, hflip):
        self.mode, self.model, self.trained = mode, model, trained
        self.batches, self.features, self.precision, self.hflip = batches, features, precision, hflip

    def inputs(self, index_batches):
        """(idx, pixels, labels) per batch; pixels are None with cached features, which need none."""
        if self.mode.cached_features:
            return ((idx, None, self.batches.labels(idx)) for idx in index_batches)
        return self.batches.prefetch(index_batches)

    def __call__(self, idx, pixels, train, generator=None, reduced_precision=True):
        if self.mode.cached_features:
            rows = torch.from_numpy(idx).to(self.features.device)
            return (self.trained if train else self.model.head)(self.features[rows])
        if train and self.mode.augments:
            pixels = augment(pixels, generator, self.hflip)
        x = self.batches.normalize(pixels)
        with self.precision.autocast(reduced_precision):
            if self.mode.trains_backbone:
                return (self.trained if train else self.model)(x)
            with torch.no_grad():
                features = self.model.backbone(x)
            return (self.trained if train else self.model.head)(features)

