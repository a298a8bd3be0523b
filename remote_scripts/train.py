#!/usr/bin/env python3
"""The training job: a folder-per-label image tree in, a self-describing ONNX classifier out.

    python remote_scripts/train.py --data DIR --output DIR [--checkpoint-dir DIR] [options]

This is the job contract of DESIGN.md 4.1, run unchanged by every backend: a local process, a
Docker container, an Azure ML job, torchrun. main() and run() (the last section) do, in order:

  parse_args           flags and their checks, before any work
  writable_folder      --output, --checkpoint-dir and the cache folder: created and write-probed
  folder_dataset.scan  list the tree, check the images per class; models.load_weights
  load_data            imagecache.py: decode every image once into a uint8 cache at the input size
                       (unreadable files skipped and reported), stratified split
  build_model          models.py: torchvision backbone, ImageNet / local / no weights, new head
  cached_features      --mode linear only: backbone features of every image, computed once
  Trainer.fit          the epochs (train_one_epoch, end_of_epoch): validation, best weights, early
                       stopping, time budget, divergence, checkpoints
  evaluate_and_export  test metrics -> metrics.json; export.py: model + softmax to ONNX, labels
                       and preprocessing in its metadata

The sections before it hold the pieces: arguments, devices, events, featurize and evaluate,
checkpoints, training, outputs. Processes and mixed precision are in runtime.py.
Progress goes to stdout as `@@orchestrate {...}` event lines (progress.py, DESIGN.md 4.2) between
ordinary log lines; only rank 0 prints them. Exit codes: 0 done; 2 bad data or arguments (one
line on stderr); 143 / 130 canceled by SIGTERM / SIGINT; 1 any other failure (a diverged loss: one
line, no traceback).

Runs on torch >= 1.13 / torchvision >= 0.14, CPU or CUDA, in one process or many (torchrun and
Azure ML's PyTorch distribution set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""
import argparse
import hashlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

try:  # imported as remote_scripts.train (by the tests)
    from . import folder_dataset, metrics, progress
    from .export import export_onnx
    from .imagecache import SKIPPED_IN_EVENTS, Batches, augment, load_data
    from .models import (ARCHS, WeightsError, build_model, freeze_backbone, load_weights,
                         set_train_mode, torch_load)
    from .runtime import Dist, Precision
except ImportError:  # started as a script: the sibling modules are top-level modules
    import folder_dataset
    import metrics
    import progress
    from export import export_onnx
    from imagecache import SKIPPED_IN_EVENTS, Batches, augment, load_data
    from models import (ARCHS, WeightsError, build_model, freeze_backbone, load_weights,
                        set_train_mode, torch_load)
    from runtime import Dist, Precision

MODES = ("linear", "head", "full")
OUTPUT_FILES = ("model.onnx", "labels.json", "metrics.json", "history.jsonl")
CHECKPOINT_FORMAT = 1
BACKBONE_LR_FACTOR = 0.1  # full mode: a pretrained backbone learns at lr * this, the new head at lr


class UsageError(Exception):
    """Bad arguments or unusable input: exit 2 with this message on stderr."""


class Diverged(Exception):
    """The loss became NaN or infinite: exit 1 without exporting a model that predicts nothing."""

    def __init__(self, epoch):
        super().__init__(f"loss diverged at epoch {epoch}; lower --lr")


class Canceled(Exception):
    """SIGTERM or SIGINT arrived: report `canceled`, exit 128 + the signal number."""

    def __init__(self, signum):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


# --------------------------------------------------------------------------------------------
# Arguments


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors, so that a bad flag ends like any other bad input:
    one line on stderr and a run_end event, not the usage block and a silent exit."""

    def error(self, message):
        raise UsageError(message)


def parse_args(argv=None):
    """The flags, checked: UsageError before any work when one is out of range."""
    parser = ArgumentParser(
        prog="train.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train an image classifier on a folder-per-label dataset and export it to ONNX.")
    add = parser.add_argument
    add("--data", required=True, help="folder-per-label image tree: DATA/<label>/**/<image>")
    add("--output", required=True, help="receives model.onnx, labels.json, metrics.json, history.jsonl")
    add("--checkpoint-dir", help="saved to after every epoch; a run started again resumes from it")
    add("--arch", choices=sorted(ARCHS), default="resnet50")
    add("--weights", default="imagenet",
        help="imagenet (torchvision's download), none (random init) or the path of a state_dict file")
    add("--mode", choices=MODES,
        help="linear: frozen backbone, features computed once, linear head trained on them; "
             "head: frozen backbone, head trained with augmentation; full: fine-tune everything "
             "(default: full on a GPU, linear on CPU)")
    add("--epochs", type=int, default=10)
    add("--batch-size", type=int, default=32, help="images per step, per process")
    add("--lr", type=float, default=1e-3,
        help="peak learning rate of the head (AdamW, warmup then cosine decay); in full mode a "
             f"pretrained backbone gets lr * {BACKBONE_LR_FACTOR}")
    add("--weight-decay", type=float, default=1e-4)
    add("--label-smoothing", type=float, default=0.0)
    add("--image-size", type=int, default=224, help="the model's input is image-size x image-size")
    add("--val-fraction", type=float, default=folder_dataset.DEFAULT_VAL_FRACTION)
    add("--test-fraction", type=float, default=folder_dataset.DEFAULT_TEST_FRACTION)
    add("--seed", type=int, default=0, help="seeds the split, the shuffling and the augmentation")
    add("--time-budget", type=float, metavar="SECONDS",
        help="stop after the epoch during which the job has run this long (earlier attempts of a "
             "resumed run count); 0: one epoch")
    add("--patience", type=int, default=5,
        help="stop after this many epochs without a lower validation loss (0: never stop early)")
    add("--workers", type=int, default=min(4, os.cpu_count() or 1),
        help="threads decoding images (0: decode in the main thread)")
    add("--no-hflip", dest="hflip", action="store_false",
        help="no random horizontal flips in augmentation (text, digits, ...)")
    add("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--cache-dir", help="folder for the decoded-image cache, removed at the end "
                            "(default: the system's temp folder)")
    args = parser.parse_args(argv)

    problems = []
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if not 16 <= args.image_size <= 2048:
        problems.append("--image-size must be between 16 and 2048")
    if not 0 < args.lr < math.inf:
        problems.append("--lr must be positive and finite")
    if not 0 <= args.weight_decay < math.inf:
        problems.append("--weight-decay must be finite and not negative")
    for name in ("patience", "seed", "workers"):
        if getattr(args, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must not be negative")
    # Checked again by the split, but here they fail before the whole dataset is decoded.
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1
            and args.val_fraction + args.test_fraction < 1):
        problems.append("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if not 0 <= args.label_smoothing < 1:
        problems.append("--label-smoothing must be in [0, 1)")
    if args.time_budget is not None and not args.time_budget >= 0:
        problems.append("--time-budget must not be negative")
    if problems:
        raise UsageError("; ".join(problems))
    return args


# --------------------------------------------------------------------------------------------
# Devices


def resolve_device(name, dist):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return device


def describe_device(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------
# Events, log lines and MLflow: rank 0 only


class Reporter:
    """Events (progress.py), log lines and MLflow metrics; silent in every process but rank 0."""

    def __init__(self, main):
        self.main = main
        self.mlflow = None

    def event(self, type_, **fields):
        if self.main:
            progress.emit(type_, **fields)

    def log(self, text):
        if self.main:
            print(text, flush=True)

    def warn(self, message):
        self.log(f"warning: {message}")
        self.event("warning", message=message)

    def throttle(self, phase, total, last=True, **fields):
        return progress.ProgressThrottle(phase, total, last=last, **fields) if self.main else _Silent()

    def start_mlflow(self, params):
        """Log to MLflow when it is installed and MLFLOW_TRACKING_URI is set (as on Azure ML)."""
        if not self.main or not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            import mlflow
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
            self.mlflow = mlflow
        except Exception:  # not installed, or the store refuses (params of a resumed run): no MLflow
            self.mlflow = None

    def mlflow_metrics(self, values, step):
        if self.mlflow is None:
            return
        try:
            self.mlflow.log_metrics({k: float(v) for k, v in values.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)
                                     and k not in ("epoch", "epochs") and math.isfinite(v)}, step=step)
        except Exception:
            self.mlflow = None


class _Silent:
    def update(self, done, **fields):
        pass


# --------------------------------------------------------------------------------------------
# Featurize (linear mode) and evaluate


@torch.no_grad()
def featurize(model, batches, indices, batch_size, precision, report):
    """Backbone features [N, D] on the CPU, rows `indices` filled (the others stay zero)."""
    report.event("phase", name="featurize")
    model.eval()
    throttle = report.throttle("featurize", len(indices))
    features = None
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        with precision.autocast():
            out = model.backbone(batches.images(idx)).float().cpu()
        if features is None:
            features = torch.zeros(len(batches.data.paths), out.shape[1])
        features[torch.from_numpy(idx)] = out
        throttle.update(start + len(idx))
    return features


@torch.no_grad()
def evaluate(logits_fn, indices, labels, batch_size, on_batch=None):
    """(probabilities [n, classes] float64, loss, accuracy) on dataset `indices`."""
    chunks = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        chunks.append(torch.softmax(logits_fn(idx).float(), dim=1).cpu())
        if on_batch:
            on_batch(start + len(idx))
    probabilities = torch.cat(chunks).double().numpy()
    truth = np.clip(probabilities[np.arange(len(labels)), labels], metrics.EPSILON, 1.0)
    return probabilities, float(-np.log(truth).mean()), float((probabilities.argmax(1) == labels).mean())


# --------------------------------------------------------------------------------------------
# Checkpoints


def fingerprint(args, mode, data):
    """The settings a checkpoint must share with this run to be resumed by it."""
    keys = ("arch", "weights", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
            "image_size", "val_fraction", "test_fraction", "seed", "hflip")
    fp = {key: getattr(args, key) for key in keys}
    fp.update(mode=mode, data=data.split_digest())
    return fp


def read_checkpoint(directory, expected):
    """The checkpoint in `directory` (None when there is none); UsageError if it is another run's."""
    path = os.path.join(directory, "last.pt") if directory else None
    if not path or not os.path.exists(path):
        return None
    try:
        saved = torch_load(path, own=True)
    except Exception as exc:
        raise UsageError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); "
                         "remove it to start over")
    found = saved.get("fingerprint", {}) if isinstance(saved, dict) else {}
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    if saved.get("format") != CHECKPOINT_FORMAT or differ:
        what = ", ".join("the data and split" if k == "data" else f"--{k.replace('_', '-')}"
                         for k in differ) or "the checkpoint format"
        raise UsageError(f"--checkpoint-dir {directory} holds a run with other settings ({what} "
                         "differ); use another --checkpoint-dir, or remove it to start over")
    # best.pt is saved before last.pt: a kill between the two leaves a best.pt of a later epoch.
    best_path = os.path.join(directory, "best.pt")
    if saved["best_epoch"] and os.path.exists(best_path):
        best = torch_load(best_path, own=True)
        if best.get("epoch") == saved["best_epoch"]:
            saved["best_weights"] = best["weights"]
    return saved


# --------------------------------------------------------------------------------------------
# Training


def warmup_cosine(total_steps, warmup_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return factor


def epoch_batches(train, seed, epoch, dist, batch_size, drop_single):
    """This process's batches of one epoch: one seeded shuffle shared by all processes, dealt out
    round-robin (what DistributedSampler does), padded so that every process takes as many steps."""
    order = np.random.default_rng([seed, epoch]).permutation(train)
    if dist.world > 1:
        order = np.resize(order, math.ceil(len(order) / dist.world) * dist.world)[dist.rank::dist.world]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_single and len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # BatchNorm cannot train on a batch of one
    return batches


def epoch_seed(seed, epoch, rank):
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class Trainer:
    """The training loop and its state: optimizer, schedule, best weights, history, stop reason."""

    def __init__(self, args, mode, model, data, batches, features, precision, dist, report, started):
        self.args, self.mode, self.model, self.data = args, mode, model, data
        self.batches, self.features = batches, features
        self.precision, self.dist, self.report, self.started = precision, dist, report, started
        self.trainable = model if mode == "full" else model.head
        if mode != "full":
            freeze_backbone(model)
        self.wrapped = self.trainable  # what the training step calls: DDP wraps what trains
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            ids = [batches.device.index] if batches.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.trainable, device_ids=ids)

        groups = [{"params": list(model.head.parameters()), "lr": args.lr}]
        if mode == "full":
            backbone_lr = args.lr * (BACKBONE_LR_FACTOR if args.weights != "none" else 1.0)
            groups.insert(0, {"params": list(model.backbone.parameters()), "lr": backbone_lr})
        self.optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
        steps = len(self.batches_of(1))
        total = steps * args.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total, max(1, min(total // 10, steps))))

        self.epoch = 0                 # epochs completed
        self.history = []              # one row per epoch: history.jsonl
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_weights = None       # state_dict of the trainable part at the best epoch (rank 0)
        self.bad_epochs = 0
        self.stopped = None            # completed | early_stopping | time_budget
        self.elapsed_before = 0.0      # seconds spent by earlier attempts of a resumed run

    def batches_of(self, epoch):
        return epoch_batches(self.data.train, self.args.seed, epoch, self.dist, self.args.batch_size,
                             drop_single=self.mode == "full")

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, fp):
        directory = self.args.checkpoint_dir
        if not directory or not self.dist.main:
            return
        if self.best_weights is not None and self.best_epoch == self.epoch:
            write_atomically(os.path.join(directory, "best.pt"), torch.save,
                             {"epoch": self.best_epoch, "weights": self.best_weights})
        path = os.path.join(directory, "last.pt")
        write_atomically(path, torch.save, {
            "format": CHECKPOINT_FORMAT, "fingerprint": fp, "epoch": self.epoch,
            "weights": self.trainable.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "history": self.history, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "elapsed": self.elapsed(),
            # A time-budget stop is not final: started again (with more budget), the run goes on.
            "stopped": None if self.stopped == "time_budget" else self.stopped,
        })
        self.report.event("checkpoint", epoch=self.epoch, path=path)

    def restore(self, saved):
        self.trainable.load_state_dict(saved["weights"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.precision.scaler is not None and saved.get("scaler"):
            self.precision.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.history = saved["epoch"], list(saved["history"])
        self.best_loss, self.best_epoch = saved["best_loss"], saved["best_epoch"]
        self.bad_epochs, self.stopped = saved["bad_epochs"], saved["stopped"]
        self.elapsed_before = saved["elapsed"]
        self.best_weights = saved.get("best_weights")
        if self.best_epoch and self.best_weights is None:
            self.report.warn(f"{self.args.checkpoint_dir}/best.pt does not hold the weights of the best "
                             f"epoch {self.best_epoch} (stopped between two saves?); keeping the last "
                             "weights instead")
            self.best_loss, self.best_epoch = math.inf, 0

    def elapsed(self):
        return self.elapsed_before + time.time() - self.started

    # -- one step, one epoch -----------------------------------------------------------------
    def logits(self, idx, train, generator=None, amp=True):
        """The model's logits for dataset indices `idx`; in training through DDP, with augmentation."""
        if self.mode == "linear":
            rows = torch.from_numpy(idx).to(self.features.device)
            return (self.wrapped if train else self.model.head)(self.features[rows])
        x = self.batches.pixels(idx)
        if train:
            x = augment(x, generator, self.args.hflip)
        x = self.batches.normalize(x)
        with self.precision.autocast(amp):
            if self.mode == "full":
                return (self.wrapped if train else self.model)(x)
            with torch.no_grad():
                features = self.model.backbone(x)
            return (self.wrapped if train else self.model.head)(features)

    def train_one_epoch(self, epoch, throttle):
        """One pass over this process's share of the training split: (mean loss, accuracy)."""
        args, device = self.args, self.batches.device
        set_train_mode(self.model, self.mode)
        seed = epoch_seed(args.seed, epoch, self.dist.rank)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator().manual_seed(seed)  # augmentation
        batches = self.batches_of(epoch)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
        for step, idx in enumerate(batches):
            labels = self.batches.labels(idx)
            logits = self.logits(idx, train=True, generator=generator)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.step(loss, self.optimizer)
            self.scheduler.step()
            totals[0] += loss.detach().double() * len(idx)  # no .item(): no GPU sync per step
            totals[1] += (logits.detach().argmax(1) == labels).sum().double()
            totals[2] += len(idx)
            throttle.update(step + 1, epoch=epoch)
        loss_sum, correct, seen = self.dist.all_sum(totals).tolist()
        return loss_sum / seen, correct / seen

    def validate(self):
        self.model.eval()
        val = self.data.val
        _, loss, accuracy = evaluate(lambda idx: self.logits(idx, train=False), val,
                                     self.data.labels[val], self.args.batch_size)
        return loss, accuracy

    def end_of_epoch(self, epoch, train_loss, train_accuracy, started):
        """Rank 0: validate, keep the best weights, record, and decide whether to stop."""
        args, has_val = self.args, len(self.data.val) > 0
        row = {"epoch": epoch, "epochs": args.epochs, "train_loss": train_loss,
               "train_accuracy": train_accuracy, "val_loss": None, "val_accuracy": None,
               "lr": self.optimizer.param_groups[-1]["lr"], "best": False}
        if has_val:
            row["val_loss"], row["val_accuracy"] = self.validate()
        if not math.isfinite(train_loss) or (has_val and not math.isfinite(row["val_loss"])):
            return "diverged"
        if has_val:
            if row["val_loss"] < self.best_loss:
                self.best_loss, self.best_epoch, self.bad_epochs = row["val_loss"], epoch, 0
                self.best_weights = {k: v.detach().cpu().clone() for k, v in self.trainable.state_dict().items()}
                row["best"] = True
            else:
                self.bad_epochs += 1
        row["seconds"] = round(time.time() - started, 3)  # training and validation
        self.history.append(row)
        write_history(args.output, self.history)
        self.report.event("epoch_end", **row)
        self.report.log(format_epoch(row))
        self.report.mlflow_metrics(row, step=epoch)
        if epoch >= args.epochs:
            return "completed"
        if has_val and args.patience and self.bad_epochs >= args.patience:
            self.report.log(f"early stopping: no lower validation loss for {args.patience} epochs "
                            f"(best: epoch {self.best_epoch})")
            return "early_stopping"
        if args.time_budget is not None and self.elapsed() >= args.time_budget:
            self.report.warn(f"time budget of {args.time_budget:g}s spent after epoch {epoch}/"
                             f"{args.epochs}; stopping")
            return "time_budget"
        return None

    def fit(self, fp):
        """Run the remaining epochs; leave the best-on-validation weights in the model."""
        reasons = (None, "completed", "early_stopping", "time_budget", "diverged")
        self.report.event("phase", name="train")
        # One throttle for all epochs: ~2 progress events a second however short the epochs are;
        # the end of each epoch is marked by its epoch_end event.
        throttle = self.report.throttle("train", len(self.batches_of(1)), last=False, epochs=self.args.epochs)
        while self.stopped is None and self.epoch < self.args.epochs:
            epoch = self.epoch + 1
            started = time.time()
            train_loss, train_accuracy = self.train_one_epoch(epoch, throttle)
            decision = None
            if self.dist.main:
                decision = self.end_of_epoch(epoch, train_loss, train_accuracy, started)
            decision = reasons[int(self.dist.broadcast(reasons.index(decision)))]
            if decision == "diverged":  # every process raises; the checkpoint keeps the last finite epoch
                raise Diverged(epoch)
            self.epoch, self.stopped = epoch, decision
            self.save(fp)
        self.stopped = self.stopped or "completed"
        if self.best_weights is not None:
            self.trainable.load_state_dict(self.best_weights)
        return self.stopped


def format_epoch(row):
    text = (f"epoch {row['epoch']}/{row['epochs']}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.3f}")
    if row["val_loss"] is not None:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
    return text + f"  {row['seconds']:.1f}s" + ("  *best" if row["best"] else "")


# --------------------------------------------------------------------------------------------
# Outputs


def write_atomically(path, save, obj):
    """save(obj, path + ".tmp"), then rename it to `path`: a kill leaves the old file or the new
    one, never half of one (a resumed run or a follower reads whole files)."""
    tmp = path + ".tmp"
    save(obj, tmp)
    os.replace(tmp, path)


def save_text(text, path):
    with open(path, "w") as f:
        f.write(text)


def write_json(path, obj):
    write_atomically(path, save_text, progress.dumps(obj, indent=2) + "\n")


def write_history(output, history):
    write_atomically(os.path.join(output, "history.jsonl"), save_text,
                     "".join(progress.dumps(row) + "\n" for row in history))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# main


def run(args, dist, report, started, cache_dir):
    device = resolve_device(args.device, dist)
    mode = args.mode or ("full" if device.type == "cuda" else "linear")
    if dist.world > 1:
        if mode == "linear":
            # Features are computed once and the head trains in seconds: one process does it all.
            if not dist.main:
                print(f"rank {dist.rank}: --mode linear runs in rank 0 alone", flush=True)
                return
            report.warn(f"--mode linear runs in one process; the other {dist.world - 1} stay idle")
            dist.world = 1
        else:
            dist.init(device)
    if mode == "full" and args.batch_size < 2:
        raise UsageError("--mode full needs --batch-size 2 or more: BatchNorm cannot train on one image")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if dist.main:  # rank 0 writes them: found unwritable now, not after the training
        writable_folder(args.output, "--output")
        if args.checkpoint_dir:
            writable_folder(args.checkpoint_dir, "--checkpoint-dir")

    # List the data, then get the weights: both fail fast, before the long decoding.
    report.event("phase", name="scan")
    scan = folder_dataset.scan(args.data)
    for name in scan.empty_classes:
        report.warn(f"folder '{name}' has no images and is not a class")
    check_class_sizes(scan, args.val_fraction, args.test_fraction)
    if dist.local_rank != 0:
        dist.barrier()  # local rank 0 downloads into the machine's torch hub cache first
    state = load_weights(args.arch, args.weights)
    if dist.local_rank == 0:
        dist.barrier()

    data = load_data(args, scan, dist, report, cache_dir)
    torch.manual_seed(args.seed)  # the head's initialization
    model = build_model(args.arch, len(data.classes), state, standardize=mode == "linear",
                        source=args.weights, warn=report.warn)
    del state
    precision = Precision(device, args.amp)
    channels_last = precision.enabled and mode != "linear"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batches = Batches(data, device, channels_last)
    fp = fingerprint(args, mode, data)
    saved = read_checkpoint(args.checkpoint_dir, fp)

    config = dict(vars(args), mode=mode, world_size=dist.world, precision=precision.describe())
    report.event("run_start", classes=list(data.classes), split=data.sizes(), device=describe_device(device),
                 config=config, skipped=len(data.skipped), resumed_from_epoch=saved["epoch"] if saved else None)
    sizes = data.sizes()
    report.log(f"{len(data.classes)} classes; train {sizes['train']}, val {sizes['val']}, test "
               f"{sizes['test']}; {args.arch} ({mode}, weights {args.weights}) on "
               f"{describe_device(device)}, {precision.describe()}"
               + (f", {dist.world} processes" if dist.world > 1 else ""))
    report.start_mlflow(config)
    if not sizes["val"]:
        report.warn("no validation split (--val-fraction 0): no early stopping, and the last "
                    "epoch's weights are kept")

    features = None
    if mode == "linear":
        features = cached_features(args, model, data, batches, precision, fp, report)
        model.head[0].fit(features[torch.from_numpy(data.train)].to(device))
        features = features.to(device)

    trainer = Trainer(args, mode, model, data, batches, features, precision, dist, report, started)
    if saved:
        trainer.restore(saved)
        report.log(f"resuming from {args.checkpoint_dir} after epoch {trainer.epoch}/{args.epochs}")
    stopped = trainer.fit(fp)
    if dist.main:
        evaluate_and_export(args, mode, model, data, trainer, stopped, report)
    dist.barrier()


def writable_folder(path, flag):
    """Create folder `path` and write a file in it; UsageError naming `flag` when that fails."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not a writable folder ({exc.strerror or exc})") from None


def check_class_sizes(scan, val_fraction, test_fraction):
    """The split's per-class minimum on the scanned counts: a class too small fails before the
    decoding rather than after it (the split checks again once unreadable files are left out)."""
    need = folder_dataset.minimum_per_class(val_fraction, test_fraction)
    counts = np.bincount([label for _, label in scan.samples], minlength=len(scan.classes))
    for name, count in zip(scan.classes, counts):
        if count < need:
            raise folder_dataset.DatasetError(
                f"class '{name}' has {count} image(s); at least {need} are needed to split it into "
                "train/validation/test (lower --val-fraction/--test-fraction or add images)")


def evaluate_and_export(args, mode, model, data, trainer, stopped, report):
    """Rank 0: test metrics of the kept weights -> metrics.json, then the model and the other files."""
    report.event("phase", name="evaluate")
    evaluated_on, indices = "test", data.test
    if not len(indices):
        evaluated_on, indices = ("val", data.val) if len(data.val) else ("train", data.train)
        report.warn(f"no test split (--test-fraction 0): metrics.json is computed on the {evaluated_on} split")
    model.eval()
    throttle = report.throttle("evaluate", len(indices))
    # float32, no autocast: the numbers the exported ONNX model gives
    probabilities, _, _ = evaluate(lambda idx: trainer.logits(idx, train=False, amp=False), indices,
                                   data.labels[indices], args.batch_size, throttle.update)
    if not np.isfinite(probabilities).all():  # e.g. the last step of a run without validation
        raise Diverged(trainer.epoch)
    result = metrics.classification_metrics(data.labels[indices], probabilities, data.classes)
    result.update(evaluated_on=evaluated_on, split=data.sizes(), skipped=data.skipped,
                  best_epoch=trainer.best_epoch or trainer.epoch, epochs_completed=trainer.epoch,
                  stopped=stopped, arch=args.arch, mode=mode)
    report.log(f"{evaluated_on} accuracy {result['accuracy']:.4f}, macro accuracy "
               f"{result['macro_accuracy']:.4f}, log-loss {result['log_loss']:.4f}")
    # The confusion matrix (classes^2 numbers: megabytes for 1000 classes) is in metrics.json only.
    report.event("metrics", **{k: v for k, v in result.items() if k != "confusion_matrix"
                               and k != "skipped"}, skipped=data.skipped[:SKIPPED_IN_EVENTS])
    report.mlflow_metrics({f"test_{k}": result[k] for k in ("accuracy", "macro_accuracy", "log_loss")},
                          step=trainer.epoch)

    report.event("phase", name="export")
    out = args.output
    export_onnx(model, os.path.join(out, "model.onnx"), data.classes, data.spec, args.arch, mode)
    write_json(os.path.join(out, "labels.json"), list(data.classes))
    write_json(os.path.join(out, "metrics.json"), result)
    write_history(out, trainer.history)
    for name in OUTPUT_FILES:
        path = os.path.join(out, name)
        report.event("artifact", name=name, path=path, bytes=os.path.getsize(path), sha256=sha256_of(path))
    report.log(f"wrote {', '.join(OUTPUT_FILES)} to {out}")


def cached_features(args, model, data, batches, precision, fp, report):
    """Linear mode's backbone features, from the checkpoint folder when an earlier attempt made them."""
    path = os.path.join(args.checkpoint_dir, "features.pt") if args.checkpoint_dir else None
    key = {k: fp[k] for k in ("arch", "weights", "image_size", "data")}
    if path and os.path.exists(path):
        saved = torch_load(path, own=True)
        if saved.get("key") == key:
            report.log(f"features loaded from {path}")
            return saved["features"]
    usable = np.sort(np.concatenate([data.train, data.val, data.test]))
    features = featurize(model, batches, usable, args.batch_size, precision, report)
    if path:
        write_atomically(path, torch.save, {"key": key, "features": features})
    return features


def make_cache_dir(args, dist):
    """A folder for the decoded images: fresh per process, or one per machine and job when distributed."""
    root = args.cache_dir or tempfile.gettempdir()
    writable_folder(root, "--cache-dir")
    if dist.world == 1:
        return tempfile.mkdtemp(prefix="orchestrate-cache-", dir=root)
    env = os.environ
    key = "|".join([env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", ""),
                    env.get("TORCHELASTIC_RUN_ID", ""), os.path.abspath(args.data)])
    path = os.path.join(root, "orchestrate-cache-" + hashlib.sha256(key.encode()).hexdigest()[:16])
    os.makedirs(path, exist_ok=True)
    return path


def main(argv=None):
    started = time.time()
    dist = Dist.from_env()
    report = Reporter(dist.main)
    cache_dir = None

    def on_signal(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup run
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Canceled(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def end(status, code, error=None):
        report.event("run_end", status=status, seconds=round(time.time() - started, 3),
                     exit_code=code, error=error)
        return code

    try:
        args = parse_args(argv)
        cache_dir = make_cache_dir(args, dist)
        run(args, dist, report, started, cache_dir)
        return end("completed", 0)
    except (UsageError, WeightsError, folder_dataset.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return end("failed", 2, str(exc))
    except Diverged as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return end("failed", 1, str(exc))
    except Canceled as exc:
        # Checkpoints are written after every epoch: a restarted run loses at most this epoch.
        report.log(f"canceled by signal {exc.signum}")
        return end("canceled", 128 + exc.signum, str(exc))
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        return end("failed", 1, f"{type(exc).__name__}: {exc}")
    finally:
        dist.close()
        if cache_dir and dist.local_rank == 0:
            shutil.rmtree(cache_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
