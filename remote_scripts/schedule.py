"""The order and the pace of training: each process's batches of an epoch, the learning-rate
schedule and the class weights of --balance.

Every process of a distributed run draws the same seeded shuffle and takes its share of it, so
the batches depend on the seed, the epoch and the world size alone: a resumed run sees the same
batches as one that never stopped.
"""
import math
import warnings

import numpy as np
import torch

from .lifecycle import UsageError


def warmup_cosine(optimizer, total_steps, warmup_steps):
    """Linear warmup from lr / warmup_steps to lr, then cosine decay to zero, stepped per batch."""
    lr = torch.optim.lr_scheduler
    # torch 1.13's SequentialLR steps its second scheduler with an epoch argument it deprecates
    # itself, warning in every process at the milestone; the schedule is right.
    warnings.filterwarnings("ignore", message="The epoch parameter in `scheduler.step", category=UserWarning)
    warmup = lr.LinearLR(optimizer, start_factor=1 / warmup_steps, total_iters=max(1, warmup_steps - 1))
    decay = lr.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    return lr.SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def epoch_batches(train, seed, epoch, dist, batch_size, drop_single):
    """This process's batches of one epoch: one seeded shuffle shared by all processes, dealt out
    round-robin (what DistributedSampler does), padded so that every process takes as many steps.

    With `drop_single` (BatchNorm trains) no batch holds one image: a last batch of one is left
    out (by every process alike, as their shares are equal), and a share of one image is a
    UsageError, since it would be the only batch.
    """
    share = math.ceil(len(train) / dist.world)
    if drop_single and share < 2:
        raise UsageError(f"{len(train)} training image(s) cannot be shared by {dist.world} processes: BatchNorm "
                         "needs at least 2 per process (add images or start fewer processes)")
    order = np.random.default_rng([seed, epoch]).permutation(train)
    if dist.world > 1:
        order = np.resize(order, share * dist.world)[dist.rank::dist.world]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_single and len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # BatchNorm cannot train on a batch of one
    return batches


def epoch_seed(seed, epoch, rank):
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def class_weights(dataset, device):
    """--balance: loss weights n / (classes x count) from the training split, so each class
    contributes equally however rare (classes without training images get weight 0)."""
    counts = np.bincount(dataset.labels[dataset.train], minlength=len(dataset.classes)).astype(np.float64)
    weights = np.where(counts > 0, len(dataset.train) / (len(dataset.classes) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)
