"""Checkpoints: what a run saves so that a killed, preempted or canceled one continues where it was.

A checkpoint is last.pt (weights, optimizer, scheduler, scaler, the run's TrainState and, when it
was written mid-epoch on SIGTERM, the epoch's Position) and best.pt (the best epoch's weights), in
--checkpoint-dir. It is written off the hot path by a background thread, replaced atomically, and
read back only by a run with the same fingerprint: the settings that decide what the next step
does. Files are loaded with weights_only (models.torch_load): plain tensors and values, no code.
"""
import copy
import math
import os
import threading
from dataclasses import dataclass, field
from enum import IntEnum

import torch

from .atomic import write_atomically
from .lifecycle import UsageError
from .models import one_line, torch_load


CHECKPOINT_FORMAT = 2


def fingerprint_of(args, mode, dataset, dist):
    """The settings a checkpoint must share with this run to be resumed by it.

    The world size is part of it: each process's share of an epoch, and so the steps per epoch
    and the learning-rate schedule, depend on it.
    """
    keys = ("arch", "weights", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "balance",
            "image_size", "val_fraction", "test_fraction", "seed", "no_hflip")
    found = {key: getattr(args, key) for key in keys}
    found.update(mode=mode.name, data=dataset.split_digest(), world_size=dist.world)
    return found


def cpu_copy(obj):
    """`obj` with every tensor copied to the CPU: a snapshot the next step cannot change."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return copy.deepcopy(obj)


class Position:
    """Where an epoch stands: its batches, the step reached, the RNG states and running totals.

    Saved in a checkpoint written on SIGTERM mid-epoch, so that a resumed run continues with the
    very next batch, the same augmentation and the same totals as if it had not stopped.
    """

    def __init__(self, epoch, batches, seed, device, saved=None):
        self.epoch, self.batches, self.step = epoch, batches, 0
        self.generator = torch.Generator().manual_seed(seed)  # augmentation boxes
        torch.manual_seed(seed)                                # dropout
        self.totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
        self.device = device
        if saved:
            self.step = saved["step"]
            self.generator.set_state(saved["generator"])
            torch.set_rng_state(saved["rng"])
            if saved.get("cuda_rng") is not None and device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"], device)  # dropout on the GPU
            self.totals = torch.tensor(saved["totals"], dtype=torch.float64, device=device)

    def state(self):
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"epoch": self.epoch, "step": self.step, "generator": self.generator.get_state(),
                "rng": torch.get_rng_state(), "cuda_rng": cuda_rng, "totals": self.totals.tolist()}


class CheckpointWriter:
    """Writes checkpoints in a background thread: training goes on while last.pt reaches the disk.

    The state is snapshot to the CPU first (fast), then torch.save runs off the hot path; one
    write is in flight at a time, and every file is replaced atomically, so a kill at any moment
    leaves the previous checkpoint or the new one. Only last.pt and best.pt are kept.
    """

    def __init__(self, directory, report):
        self.directory, self.report = directory, report
        self.thread = None
        self.error = None
        # A kill -9 in the middle of a write leaves its temporary file (hundreds of MB): not kept.
        for name in os.listdir(directory) if directory else ():
            if name.startswith((".last.pt.", ".best.pt.")) and name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))

    def save(self, checkpoint, best=None, wait=False):
        if not self.directory:
            return
        self.wait()
        snapshot = cpu_copy(checkpoint)
        best_snapshot = cpu_copy(best) if best is not None else None

        def write():
            try:
                # best.pt first: a kill between the two leaves a best.pt newer than last.pt's
                # best epoch, which read_checkpoint detects.
                if best_snapshot is not None:
                    write_atomically(os.path.join(self.directory, "best.pt"),
                                     lambda tmp: torch.save(best_snapshot, tmp))
                path = os.path.join(self.directory, "last.pt")
                write_atomically(path, lambda tmp: torch.save(snapshot, tmp))
                self.report.event("checkpoint", epoch=snapshot["epoch"], path=path,
                                  partial=snapshot["position"] is not None)
            except Exception as exc:  # reported by the next wait(), in the main thread
                self.error = exc

        self.thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self.thread.start()
        if wait:
            self.wait()

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def read_own(path):
    """A file of --checkpoint-dir (checkpoint, cached features), loaded as models.torch_load(own=True)
    does: tensors and plain values only, where this torch can. UsageError, in one line, for a file
    that cannot be read or holds more than that, unread."""
    try:
        return torch_load(path, own=True)
    except Exception as exc:
        raise UsageError(f"cannot read checkpoint {path} ({type(exc).__name__}: {one_line(str(exc))}); "
                         "remove it to start over") from None


def read_checkpoint(directory, expected):
    """The checkpoint in `directory` (None when there is none); UsageError if it is another run's."""
    path = os.path.join(directory, "last.pt") if directory else None
    if not path or not os.path.exists(path):
        return None
    saved = read_own(path)
    if not isinstance(saved, dict):
        saved = {}  # not a checkpoint of this job: refused below as of another format
    found = saved.get("fingerprint", {})
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    if saved.get("format") != CHECKPOINT_FORMAT or differ:
        what = ", ".join("the data and split" if k == "data" else f"--{k.replace('_', '-')}"
                         for k in differ) or "the checkpoint format"
        raise UsageError(f"--checkpoint-dir {directory} holds a run with other settings ({what} "
                         "differ); use another --checkpoint-dir, or remove it to start over")
    best_path = os.path.join(directory, "best.pt")
    if saved["best_epoch"] and os.path.exists(best_path):
        best = read_own(best_path)
        if isinstance(best, dict) and best.get("epoch") == saved["best_epoch"]:
            saved["best_weights"] = best["weights"]
    return saved


class Decision(IntEnum):
    """What rank 0 decides after an epoch; every rank receives it by its value (Dist.broadcast)."""
    GO_ON = 0
    COMPLETED = 1
    EARLY_STOPPING = 2
    TIME_BUDGET = 3
    EARLY_TERMINATION = 4
    DIVERGED = 5

    @property
    def stopped(self):
        """TrainState.stopped, as metrics.json and the checkpoint name it."""
        return None if self is Decision.GO_ON else self.name.lower()


@dataclass
class TrainState:
    """Where a run stands between epochs. SAVED is what a checkpoint holds of it besides the
    weights, optimizer and schedule (the same keys as before, so older checkpoints resume)."""
    epoch: int = 0                               # epochs completed
    history: list = field(default_factory=list)  # their epoch_end rows
    best_loss: float = math.inf                  # the lowest validation loss so far, and its epoch
    best_epoch: int = 0
    bad_epochs: int = 0                          # epochs since the best one (early stopping)
    stopped: str = None                          # why the epochs ended (Decision.stopped); None: go on
    elapsed: float = 0.0                         # seconds of training, earlier attempts included
    best_weights: dict = None                    # the best epoch's weights (best.pt)
    position: dict = None                        # where a mid-epoch checkpoint stopped (Position.state)

    SAVED = ("epoch", "history", "best_loss", "best_epoch", "bad_epochs", "stopped", "elapsed")


def resume(args, setup, report):
    """The TrainState to start from: a new one, or that of the checkpoint `setup` (train.Setup)
    read, whose weights, optimizer, schedule and loss scale are loaded into `setup`."""
    state, saved = TrainState(), setup.saved
    if not saved:
        return state
    setup.trainable.load_state_dict(saved["weights"])
    setup.optimizer.load_state_dict(saved["optimizer"])
    setup.scheduler.load_state_dict(saved["scheduler"])
    if setup.precision.scaler is not None and saved.get("scaler"):
        setup.precision.scaler.load_state_dict(saved["scaler"])
    state = TrainState(**{key: saved[key] for key in TrainState.SAVED}, best_weights=saved.get("best_weights"),
                       position=saved.get("position"))
    if state.best_epoch and state.best_weights is None:
        report.warn(f"{args.checkpoint_dir}/best.pt does not hold the weights of the best "
                    f"epoch {state.best_epoch} (stopped between two saves?); keeping the last "
                    "weights instead")
        state.best_loss, state.best_epoch = math.inf, 0
    where = (f"in epoch {state.position['epoch']} at step {state.position['step']}"
             if state.position else f"after epoch {state.epoch}/{args.epochs}")
    report.log(f"resuming from {args.checkpoint_dir} {where}")
    return state


def save_checkpoint(writer, setup, state, elapsed, position=None, best=False, wait=False):
    """last.pt (and best.pt with `best`) of the run `setup` (train.Setup), written by the background
    `writer`; `elapsed`: the seconds of training so far, this attempt's included."""
    state.elapsed = elapsed
    writer.save({
        "format": CHECKPOINT_FORMAT, "fingerprint": setup.fingerprint,
        **{key: getattr(state, key) for key in TrainState.SAVED},
        # A time-budget stop is not final: started again (with more budget), the run goes on.
        "stopped": None if state.stopped == Decision.TIME_BUDGET.stopped else state.stopped,
        "weights": setup.trainable.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "scaler": setup.precision.scaler.state_dict() if setup.precision.scaler else None,
        "position": position.state() if position else None,
    }, best={"epoch": state.best_epoch, "weights": state.best_weights} if best else None, wait=wait)
