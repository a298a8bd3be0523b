#!/usr/bin/env python3
"""The training job: a folder-per-label image tree in, a self-describing ONNX classifier out.

    python remote_scripts/train.py --data DIR --output DIR [--checkpoint-dir DIR] [options]

This is the job contract of DESIGN.md 4.1, run unchanged by every backend: a local process, a
Docker container, an Azure ML job, torchrun. It is shaped like torchvision's
references/classification/train.py and reads top to bottom:

  MODES            what each --mode trains, freezes and caches
  parse_args       the flags (options.py, shared with the client) and their checks
  load_data        scan the folder, decode every image once into the cache, split (imagecache.py)
  create_model     torchvision backbone with ImageNet / local / no weights and a new head (models.py)
  train_one_epoch  one pass over the training split
  evaluate         class probabilities, loss and accuracy on a split, sharded across processes
  checkpoints      saved off the hot path after every epoch and on SIGTERM; resumed on start
  main             the run: data, model, epochs (validation, best weights, early stopping, time
                   budget), test metrics -> metrics.json, per-image predictions ->
                   predictions.csv, export.py -> model.onnx

Progress goes to stdout as `@@orchestrate {...}` event lines (progress.py, DESIGN.md 4.2) between
ordinary log lines; only rank 0 prints them. Exit codes: 0 done; 2 bad data or arguments (one
line on stderr); 143 / 130 canceled by SIGTERM / SIGINT; 1 any other failure (a diverged loss: one
line, no traceback).

Runs on torch >= 1.13 / torchvision >= 0.14, CPU or CUDA, in one process or many (torchrun and
Azure ML's PyTorch distribution set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""
import argparse
import copy
import gc
import hashlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass

# Started as the job, a SIGTERM during the imports below (torch takes seconds) is kept for main(),
# which ends the run with its run_end event: torchrun's agent stops every process that early when
# one fails at once (bad arguments, no GPU for it).
STARTUP_SIGNALS = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: STARTUP_SIGNALS.append(signum))

import numpy as np
import torch

try:  # imported as remote_scripts.train (by the tests)
    from . import folder_dataset, imagecache, imaging, metrics, options, packed_dataset, progress
    from .atomic import write_atomically
    from .export import export_backbone, export_onnx
    from .imagecache import SKIPPED_IN_EVENTS, Batches, augment
    from .models import WeightsError, build_model, freeze_backbone, load_weights, one_line, set_train_mode, torch_load
    from .runtime import Dist, PeerFailed, Precision, PrecisionError
except ImportError:  # started as a script: the sibling modules are top-level modules
    import folder_dataset
    import imagecache
    import imaging
    import metrics
    import options
    import packed_dataset
    import progress
    from atomic import write_atomically
    from export import export_backbone, export_onnx
    from imagecache import SKIPPED_IN_EVENTS, Batches, augment
    from models import WeightsError, build_model, freeze_backbone, load_weights, one_line, set_train_mode, torch_load
    from runtime import Dist, PeerFailed, Precision, PrecisionError

OUTPUT_FILES = ("model.onnx", "labels.json", "metrics.json", "history.jsonl", "predictions.csv")
CHECKPOINT_FORMAT = 2


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
# Modes


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


# --------------------------------------------------------------------------------------------
# Arguments


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors, so that a bad flag ends like any other bad input:
    one line on stderr and a run_end event, not the usage block and a silent exit."""

    def error(self, message):
        raise UsageError(message)


def get_args_parser():
    """The job's flags: the three paths a backend maps, then options.OPTIONS (shared with the client)."""
    parser = ArgumentParser(
        prog="train.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train an image classifier on a folder-per-label dataset and export it to ONNX.")
    parser.add_argument("--data", required=True, help="folder-per-label image tree: DATA/<label>/**/<image>")
    parser.add_argument("--output", required=True,
                        help="receives model.onnx, labels.json, metrics.json, history.jsonl, predictions.csv")
    parser.add_argument("--checkpoint-dir",
                        help="saved to after every epoch and on SIGTERM; a run started again resumes from it")
    types = {"int": int, "float": float}
    for option in options.OPTIONS:
        if option.kind == "flag":
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(option.flag, type=types.get(option.kind, str), default=option.default,
                                choices=option.choices or None, metavar=option.metavar, help=option.help)
    return parser


def parse_args(argv=None):
    """The flags, checked: UsageError before any work when one is out of range."""
    args = get_args_parser().parse_args(argv)
    problems = options.problems(vars(args))
    if problems:
        raise UsageError("; ".join(problems))
    return args


# --------------------------------------------------------------------------------------------
# Devices, events and log lines


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
            count = torch.cuda.device_count()
            if dist.local_rank >= count:
                raise UsageError(f"process {dist.local_rank} of this machine has no GPU of its own ({count} "
                                 "visible): start at most one process per GPU, or use --device cpu")
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return device


def compute_threads(processes):
    """Threads for torch's CPU kernels: the CPUs this process may use, shared by the `processes`
    computing on its machine.

    Why not torch's default: it counts the machine's cores, not a container's CPU quota (docker
    --cpus) or affinity mask, and oversubscribed threads run slower than fewer ones. A job not
    started by torchrun honours an explicit OMP_NUM_THREADS; under torchrun (LOCAL_WORLD_SIZE is
    set) torchrun's own OMP_NUM_THREADS=1 would leave cores idle, so the quota is divided instead.
    """
    if "LOCAL_WORLD_SIZE" not in os.environ and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, imagecache.available_cpus() // processes)


def describe_device(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


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
        if not self.main:
            return progress.NoProgress()
        return progress.ProgressThrottle(phase, total, last=last, **fields)

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


class OneRun:
    """What a run takes from the job it runs in: a training job is one run, which loads,
    featurizes and exports for itself and stops by its own rules only.

    search.py runs many trials in one process and hands each a subclass: the dataset and the
    features the first trial made, a stop for a trial falling behind the others, and an export
    only for a model that leads the search.
    """

    def dataset(self, args, load):
        """The decoded, split dataset of `args`: load()."""
        return load()

    def features(self, key, compute):
        """Linear mode's (features, backbone graph) for `key` (arch, weights, image size, data): compute()."""
        return compute()

    def falls_behind(self, history):
        """Whether to stop after the epochs of `history` because other runs did better: never."""
        return False

    def exports_model(self, history):
        """Whether to write model.onnx for a run whose epochs were `history`: always."""
        return True


# --------------------------------------------------------------------------------------------
# Data


def load_data(args, dist, report):
    """List the tree, check every class can be split, decode every image once, split.

    The class sizes are checked on the scan, before the long decoding; the split checks again
    once unreadable files are left out. Returns imagecache's decoded dataset.
    """
    report.event("phase", name="scan")
    if packed_dataset.is_packed(args.data):  # labels, paths and digests come from its index
        scan = packed_dataset.PackedDataset(args.data).scan()
        report.log(f"packed dataset: {len(scan.samples)} images in {len(scan.packed.doc['shards'])} shard(s), "
                   f"labeled by {scan.packed.doc['labels']} when packed (--labels is not read again)")
    else:
        scan = folder_dataset.scan(args.data, labels=args.labels)
    for name in scan.empty_classes:
        report.warn(f"folder '{name}' has no images and is not a class")
    for link in scan.skipped:  # never read; metrics.json lists them with the unreadable files
        report.log(f"left out {link['path']}: {link['reason']}")
    if scan.skipped:
        report.warn(f"{len(scan.skipped)} link(s) lead outside the data folder and are left out, e.g. "
                    f"{scan.skipped[0]['path']} (all are listed in the log and metrics.json)")
    # Every unusable row or file is in the log; a table with thousands of them gets one warning.
    for problem in scan.problems:
        report.log(f"no label: {problem}")
    if scan.problems:
        report.warn(f"{len(scan.problems)} file(s) or row(s) gave no usable label and are left out, e.g. "
                    f"{scan.problems[0]} (all are listed in the log)")
    scan.samples = folder_dataset.sample_fraction(scan.samples, args.sample_fraction, args.seed,
                                                  args.val_fraction, args.test_fraction)
    need = folder_dataset.minimum_per_class(args.val_fraction, args.test_fraction)
    counts = np.bincount([label for _, label in scan.samples], minlength=len(scan.classes))
    for name, count in zip(scan.classes, counts):
        if count < need:
            raise folder_dataset.DatasetError(
                f"class '{name}' has {count} image(s); at least {need} are needed to split it into "
                "train/validation/test (lower --val-fraction/--test-fraction or add images)")
    return imagecache.load_data(args, scan, dist, report)


# --------------------------------------------------------------------------------------------
# Model


def create_model(args, mode, dataset, state, device, report):
    """The classifier for `mode` on `device`: backbone frozen unless the mode trains it.

    channels_last: the memory layout oneDNN (CPU) and cuDNN (tensor cores) run convolutions
    fastest in; the weights and every batch use it.
    """
    torch.manual_seed(args.seed)  # the head's initialization
    model = build_model(args.arch, len(dataset.classes), state, standardize=mode.cached_features,
                        source=args.weights, warn=report.warn)
    if not mode.trains_backbone:
        freeze_backbone(model)
    return model.to(device, memory_format=torch.channels_last)


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


@torch.no_grad()
def featurize(model, batches, indices, batch_size, report):
    """Linear mode: (the frozen backbone's features [N, D] on the CPU, rows `indices` filled; the
    backbone's ONNX graph that computed them, or None when torch did).

    Always float32, so that the head is fitted and tested on exactly the features the exported
    (float32) ONNX model computes: metrics.json is what model.onnx gives. On a CPU with
    onnxruntime installed, ONNX Runtime runs export_backbone's graph, which export_onnx then
    reuses for model.onnx, so the backbone is traced once per run: on the 2-core build machine
    (AVX-512) its loop runs 1.6x the images/s of a plain torch loop, where torch's own
    channels_last and inference_mode gain about 5% (benchmarks/train_throughput.py). Elsewhere
    (a GPU, no onnxruntime: it is optional in the job) torch computes them.
    """
    report.event("phase", name="featurize")
    model.eval()
    threads = torch.get_num_threads()
    graph, session = backbone_in_onnx_runtime(model, batches, threads)
    if session is not None:
        # ONNX Runtime computes on threads of its own. torch's small ops between its runs (the
        # batch's conversion and normalization) take one thread, so that torch's OpenMP threads,
        # which spin a while after each op, do not hold the cores ONNX Runtime is computing on.
        torch.set_num_threads(1)
    throttle = report.throttle("featurize", len(indices))
    features, done = None, 0
    try:
        for idx, pixels, _ in batches.prefetch([indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]):
            x = batches.normalize(pixels)
            if session is not None:
                out = torch.from_numpy(session.run(None, {imaging.INPUT_NAME: x.contiguous().numpy()})[0])
            else:
                with torch.inference_mode():
                    out = model.backbone(x).float().cpu()
            if features is None:
                features = torch.zeros(len(batches.data.paths), out.shape[1])
            features[torch.from_numpy(idx)] = out
            done += len(idx)
            throttle.update(done)
    finally:
        torch.set_num_threads(threads)
    return features, graph


def backbone_in_onnx_runtime(model, batches, threads):
    """(ONNX graph of the frozen backbone, an ONNX Runtime session running it on `threads` CPU
    threads), or (None, None) on a GPU or without onnxruntime."""
    if batches.device.type != "cpu":
        return None, None
    try:
        import onnxruntime
    except ImportError:
        return None, None
    graph = export_backbone(model.backbone, batches.data.spec)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return graph, session


def cached_features(args, model, dataset, batches, fingerprint, report, job):
    """Linear mode's (backbone features, their ONNX graph or None): see featurize; from the
    checkpoint folder when an earlier attempt made them (no graph then), or from the job when
    an earlier trial of a search did (OneRun.features)."""
    path = os.path.join(args.checkpoint_dir, "features.pt") if args.checkpoint_dir else None
    key = {k: fingerprint[k] for k in ("arch", "weights", "image_size", "data")}
    if path and os.path.exists(path):
        saved = read_own(path)
        if isinstance(saved, dict) and saved.get("key") == key:
            report.log(f"features loaded from {path}")
            return saved["features"], None
    usable = np.sort(np.concatenate([dataset.train, dataset.val, dataset.test]))
    features, graph = job.features(tuple(key.values()),
                                   lambda: featurize(model, batches, usable, args.batch_size, report))
    if path:
        write_atomically(path, lambda tmp: torch.save({"key": key, "features": features}, tmp))
    return features, graph


# --------------------------------------------------------------------------------------------
# Training


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


def train_one_epoch(forward, criterion, optimizer, scheduler, precision, position, stop, throttle):
    """One pass over this process's share of the training split, from `position.step` on.

    The loss and accuracy accumulate on the device (no .item() per step: no GPU sync per step).
    A stop requested by SIGTERM is honoured between two steps, where the state is consistent.
    Returns the (mean loss, accuracy) of this process's share; the caller sums across processes.
    """
    remaining = position.batches[position.step:]
    for step, (idx, pixels, labels) in enumerate(forward.inputs(remaining), start=position.step):
        logits = forward(idx, pixels, train=True, generator=position.generator)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer)
        scheduler.step()
        position.totals[0] += loss.detach().double() * len(idx)
        position.totals[1] += (logits.detach().argmax(1) == labels).sum().double()
        position.totals[2] += len(idx)
        position.step = step + 1
        throttle.update(step + 1, epoch=position.epoch)
        stop.at_safe_point()
    return position.totals


@torch.no_grad()
def evaluate(forward, indices, labels, batch_size, dist, on_batch=None, reduced_precision=True):
    """(probabilities [n, classes] float64, loss, accuracy) of dataset `indices`, on every process.

    Each process scores every world-th index; the shares are gathered and put back in order, so
    the numbers are those of one process scoring everything.
    """
    mine = indices[dist.rank::dist.world]
    chunks, done = [], 0
    for idx, pixels, _ in forward.inputs([mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]):
        logits = forward(idx, pixels, train=False, reduced_precision=reduced_precision)
        chunks.append(torch.softmax(logits.float(), dim=1).cpu().double().numpy())
        done += len(idx)
        if on_batch:
            on_batch(min(len(indices), done * dist.world))
    shares = dist.gather(np.concatenate(chunks) if chunks else None)
    probabilities = np.empty((len(indices), next(s.shape[1] for s in shares if s is not None)))
    for rank, share in enumerate(shares):
        if share is not None:
            probabilities[rank::dist.world] = share
    truth = np.clip(probabilities[np.arange(len(labels)), labels], metrics.EPSILON, 1.0)
    return probabilities, float(-np.log(truth).mean()), float((probabilities.argmax(1) == labels).mean())


def class_weights(dataset, device):
    """--balance: loss weights n / (classes x count) from the training split, so each class
    contributes equally however rare (classes without training images get weight 0)."""
    counts = np.bincount(dataset.labels[dataset.train], minlength=len(dataset.classes)).astype(np.float64)
    weights = np.where(counts > 0, len(dataset.train) / (len(dataset.classes) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


class Stop:
    """SIGTERM / SIGINT: raise Canceled at once, or, inside a training epoch, at the next step.

    Between two steps the model, optimizer and RNGs are consistent, so the checkpoint written then
    (within the backends' 10-second grace) lets a resumed run lose no completed step.
    """

    def __init__(self):
        self.deferred = False
        self.requested = None
        self.on_stop = None  # called once, with the signal number, before Canceled is raised

    def handle(self, signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup run
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.requested = signum
        if not self.deferred:
            raise Canceled(signum)

    def at_safe_point(self):
        if self.requested is not None:
            if self.on_stop:
                self.on_stop(self.requested)
            raise Canceled(self.requested)

    def undefer(self):
        """Back to stopping at once; a signal that came after the last safe point stops now."""
        self.deferred, self.on_stop = False, None
        if self.requested is not None:
            raise Canceled(self.requested)


# --------------------------------------------------------------------------------------------
# Checkpoints


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


# --------------------------------------------------------------------------------------------
# Outputs


def write_json(path, obj):
    write_atomically(path, progress.dumps(obj, indent=2) + "\n")


def write_history(output, history):
    write_atomically(os.path.join(output, "history.jsonl"), "".join(progress.dumps(row) + "\n" for row in history))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def format_epoch(row):
    text = (f"epoch {row['epoch']}/{row['epochs']}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.3f}")
    if row["val_loss"] is not None:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}"
    return text + f"  {row['seconds']:.1f}s" + ("  *best" if row["best"] else "")


def writable_folder(path, flag):
    """Create folder `path` and write a file in it; UsageError naming `flag` when that fails."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not a writable folder ({exc.strerror or exc})") from None


def evaluate_and_export(args, mode, model, forward, dataset, progress_state, stopped, dist, report,
                        backbone_graph=None, export=True):
    """Test metrics of the kept weights -> metrics.json and, per image, predictions.csv (every
    process scores its share), then rank 0 exports the model (behind `backbone_graph` when
    featurize made one; not without `export`) and writes the other files."""
    report.event("phase", name="evaluate")
    evaluated_on, indices = "test", dataset.test
    if not len(indices):
        evaluated_on, indices = ("val", dataset.val) if len(dataset.val) else ("train", dataset.train)
        report.warn(f"no test split (--test-fraction 0): metrics.json is computed on the {evaluated_on} split")
    model.eval()
    throttle = report.throttle("evaluate", len(indices))
    # float32, no autocast: the numbers the exported ONNX model gives
    probabilities, _, _ = evaluate(forward, indices, dataset.labels[indices], args.batch_size, dist,
                                   throttle.update, reduced_precision=False)
    if not dist.main:
        return
    if not np.isfinite(probabilities).all():  # e.g. the last step of a run without validation
        raise Diverged(progress_state["epoch"])
    result = metrics.classification_metrics(dataset.labels[indices], probabilities, dataset.classes)
    result.update(evaluated_on=evaluated_on, split=dataset.sizes(), skipped=dataset.skipped,
                  best_epoch=progress_state["best_epoch"] or progress_state["epoch"],
                  epochs_completed=progress_state["epoch"], stopped=stopped, arch=args.arch, mode=mode.name)
    report.log(f"{evaluated_on} accuracy {result['accuracy']:.4f}, macro accuracy "
               f"{result['macro_accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}, log-loss {result['log_loss']:.4f}")
    # The confusion matrix (classes^2 numbers: megabytes for 1000 classes) is in metrics.json only.
    report.event("metrics", **{k: v for k, v in result.items() if k != "confusion_matrix"
                               and k != "skipped"}, skipped=dataset.skipped[:SKIPPED_IN_EVENTS])
    report.mlflow_metrics({f"test_{k}": result[k] for k in metrics.HEADLINE_METRICS},
                          step=progress_state["epoch"])

    report.event("phase", name="export")
    out = args.output
    if export:
        export_onnx(model, os.path.join(out, "model.onnx"), dataset.classes, dataset.spec, args.arch, mode.name,
                    backbone=backbone_graph)
    write_json(os.path.join(out, "labels.json"), list(dataset.classes))
    write_json(os.path.join(out, "metrics.json"), result)
    write_atomically(os.path.join(out, "predictions.csv"), metrics.predictions_csv(
        [dataset.paths[i] for i in indices], dataset.labels[indices], probabilities, dataset.classes))
    write_history(out, progress_state["history"])
    written = [name for name in OUTPUT_FILES if export or name != "model.onnx"]
    for name in written:
        path = os.path.join(out, name)
        report.event("artifact", name=name, path=path, bytes=os.path.getsize(path), sha256=sha256_of(path))
    report.log(f"wrote {', '.join(written)} to {out}")


# --------------------------------------------------------------------------------------------
# main


def run(args, dist, report, started, stop, job=None):
    """Train and export one configuration; `job`: what the process shares with it (OneRun)."""
    job = job or OneRun()
    device = resolve_device(args.device, dist)
    mode = MODES[args.mode or ("full" if device.type == "cuda" else "linear")]
    if dist.world > 1:
        if mode.cached_features:
            # Features are computed once and the head trains in seconds: one process does it all.
            if not dist.main:
                print(f"rank {dist.rank}: --mode linear runs in rank 0 alone", flush=True)
                return
            report.warn(f"--mode linear runs in one process; the other {dist.world - 1} stay idle")
            dist.world = 1
        else:
            dist.init(device)
    try:
        precision = Precision(device, args.precision)
    except PrecisionError as exc:
        raise UsageError(str(exc)) from None
    if mode.cached_features:
        precision = Precision(device, "fp32")  # see featurize: features are computed in float32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        # linear mode under torchrun computes in rank 0 alone (dist.world was set to 1 above)
        torch.set_num_threads(compute_threads(int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if dist.world > 1 else 1))
    if dist.main:  # rank 0 writes them: found unwritable now, not after the training
        writable_folder(args.output, "--output")
        if args.checkpoint_dir:
            writable_folder(args.checkpoint_dir, "--checkpoint-dir")
    if dist.local_rank == 0:  # it fills the image cache of its machine
        writable_folder(imagecache.cache_root(args), "--cache-dir")

    # The weights first: a failed download fails fast, before the long decoding.
    if dist.local_rank != 0:
        dist.barrier()  # local rank 0 downloads into the machine's torch hub cache first
    state = load_weights(args.arch, args.weights)
    if dist.local_rank == 0:
        dist.barrier()
    dataset = job.dataset(args, lambda: load_data(args, dist, report))
    dist.barrier()  # every process has its data: one whose loading failed ends them all here
    model = create_model(args, mode, dataset, state, device, report)
    del state
    batches = Batches(dataset, device, channels_last=True)
    fingerprint = fingerprint_of(args, mode, dataset, dist)
    saved = read_checkpoint(args.checkpoint_dir, fingerprint)

    sizes = dataset.sizes()
    config = dict(vars(args), mode=mode.name, world_size=dist.world, precision=precision.describe())
    report.event("run_start", classes=list(dataset.classes), split=sizes, device=describe_device(device),
                 config=config, skipped=len(dataset.skipped), resumed_from_epoch=saved["epoch"] if saved else None)
    report.log(f"{len(dataset.classes)} classes; train {sizes['train']}, val {sizes['val']}, test "
               f"{sizes['test']}; {args.arch} ({mode.name}, weights {args.weights}) on "
               f"{describe_device(device)}, {precision.describe()}"
               + (f", {dist.world} processes" if dist.world > 1 else ""))
    report.start_mlflow(config)
    if not sizes["val"]:
        report.warn("no validation split (--val-fraction 0): no early stopping, and the last "
                    "epoch's weights are kept")

    features = backbone_graph = None
    if mode.cached_features:
        features, backbone_graph = cached_features(args, model, dataset, batches, fingerprint, report, job)
        model.head[0].fit(features[torch.from_numpy(dataset.train)].to(device))
        features = features.to(device)
        if device.type == "cpu":
            # The head's steps are ops of microseconds, where a second OpenMP thread saves nothing
            # (50 ms an epoch on 1 or 2 threads on the 2-core build machine) and, while another
            # process holds a core, its synchronization costs a lot (0.14 s on 1 thread, 0.5 s on 2).
            torch.set_num_threads(1)

    # What trains, how it is stepped and scheduled.
    trainable = model if mode.trains_backbone else model.head
    trained = trainable
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        trained = DistributedDataParallel(trainable, device_ids=[device.index] if device.type == "cuda" else None)
    forward = Forward(mode, model, trained, batches, features, precision, hflip=not args.no_hflip)
    groups = [{"params": list(model.head.parameters()), "lr": args.lr}]
    if mode.trains_backbone:
        backbone_lr = args.lr * (options.BACKBONE_LR_FACTOR if args.weights != "none" else 1.0)
        groups.insert(0, {"params": list(model.backbone.parameters()), "lr": backbone_lr})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)

    def batches_of(epoch):
        return epoch_batches(dataset.train, args.seed, epoch, dist, args.batch_size,
                             drop_single=mode.trains_backbone)

    steps = len(batches_of(1))
    total_steps = steps * args.epochs
    scheduler = warmup_cosine(optimizer, total_steps, max(1, min(total_steps // 10, steps)))
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(dataset, device) if args.balance else None,
                                          label_smoothing=args.label_smoothing)

    # The run's state: what a checkpoint holds besides the weights.
    state = {"epoch": 0, "history": [], "best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "stopped": None, "elapsed": 0.0}
    best_weights = None
    resume_position = None
    if saved:
        trainable.load_state_dict(saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if precision.scaler is not None and saved.get("scaler"):
            precision.scaler.load_state_dict(saved["scaler"])
        state.update({k: saved[k] for k in state})
        best_weights = saved.get("best_weights")
        resume_position = saved.get("position")
        if state["best_epoch"] and best_weights is None:
            report.warn(f"{args.checkpoint_dir}/best.pt does not hold the weights of the best "
                        f"epoch {state['best_epoch']} (stopped between two saves?); keeping the last "
                        "weights instead")
            state["best_loss"], state["best_epoch"] = math.inf, 0
        where = (f"in epoch {resume_position['epoch']} at step {resume_position['step']}"
                 if resume_position else f"after epoch {state['epoch']}/{args.epochs}")
        report.log(f"resuming from {args.checkpoint_dir} {where}")
    elapsed_before = state["elapsed"]

    def elapsed():
        return elapsed_before + time.time() - started

    writer = CheckpointWriter(args.checkpoint_dir if dist.main else None, report)

    def checkpoint(position=None, best=False, wait=False):
        state["elapsed"] = elapsed()
        writer.save({
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, **state,
            # A time-budget stop is not final: started again (with more budget), the run goes on.
            "stopped": None if state["stopped"] == "time_budget" else state["stopped"],
            "weights": trainable.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler else None,
            "position": position.state() if position else None,
        }, best={"epoch": state["best_epoch"], "weights": best_weights} if best else None, wait=wait)

    # The epochs.
    report.event("phase", name="train")
    # One throttle for all epochs: ~2 progress events a second however short the epochs are;
    # the end of each epoch is marked by its epoch_end event.
    throttle = report.throttle("train", steps, last=False, epochs=args.epochs)
    decisions = (None, "completed", "early_stopping", "time_budget", "early_termination", "diverged")
    has_val = len(dataset.val) > 0
    try:
        while state["stopped"] is None and state["epoch"] < args.epochs:
            epoch = state["epoch"] + 1
            epoch_started = time.time()
            set_train_mode(model, mode.trains_backbone)
            partial = resume_position if resume_position and resume_position["epoch"] == epoch else None
            position = Position(epoch, batches_of(epoch), epoch_seed(args.seed, epoch, dist.rank), device, partial)
            resume_position = None
            if dist.world == 1:  # a mid-epoch stop needs every process at the same step: one process only
                stop.deferred = True
                stop.on_stop = lambda signum: checkpoint(position, wait=True)
            totals = train_one_epoch(forward, criterion, optimizer, scheduler, precision, position, stop, throttle)
            stop.at_safe_point()  # a signal during the epoch's last moments (the prefetcher's end)
            stop.undefer()
            loss_sum, correct, seen = dist.all_sum(totals).tolist()
            row = {"epoch": epoch, "epochs": args.epochs, "train_loss": loss_sum / seen,
                   "train_accuracy": correct / seen, "val_loss": None, "val_accuracy": None,
                   "lr": optimizer.param_groups[-1]["lr"], "best": False}
            if has_val:
                model.eval()
                # DDP keeps the parameters equal, not the BatchNorm statistics: each process's last
                # step updated its own. Validate with rank 0's, the ones checkpointed and exported.
                dist.share(trainable.buffers())
                _, row["val_loss"], row["val_accuracy"] = evaluate(
                    forward, dataset.val, dataset.labels[dataset.val], args.batch_size, dist)
            decision = None
            if dist.main:
                decision = end_of_epoch(args, row, state, has_val, epoch_started, elapsed, report, job)
                if row["best"]:
                    best_weights = {k: v.detach().cpu().clone() for k, v in trainable.state_dict().items()}
            decision = decisions[int(dist.broadcast(decisions.index(decision)))]
            if decision == "diverged":  # every process raises; the checkpoint keeps the last finite epoch
                raise Diverged(epoch)
            state["epoch"], state["stopped"] = epoch, decision
            checkpoint(best=row["best"])
        state["stopped"] = state["stopped"] or "completed"
    finally:
        stop.deferred, stop.on_stop = True, None  # an in-flight checkpoint lands whole, then a signal counts
        writer.wait()
        stop.deferred = False
    stop.undefer()
    if best_weights is not None:
        trainable.load_state_dict(best_weights)
    # Only rank 0 keeps the best epoch's weights: every process scores its share of the test
    # split with them, so that metrics.json is what the exported model gives.
    dist.share(trainable.state_dict().values())
    evaluate_and_export(args, mode, model, forward, dataset, state, state["stopped"], dist, report, backbone_graph,
                        export=job.exports_model(state["history"]))
    dist.barrier()


def end_of_epoch(args, row, state, has_val, epoch_started, elapsed, report, job):
    """Rank 0: keep the best epoch, record the row, and decide whether to stop (None: go on)."""
    epoch = row["epoch"]
    if not math.isfinite(row["train_loss"]) or (has_val and not math.isfinite(row["val_loss"])):
        return "diverged"
    if has_val:
        if row["val_loss"] < state["best_loss"]:
            state["best_loss"], state["best_epoch"], state["bad_epochs"] = row["val_loss"], epoch, 0
            row["best"] = True
        else:
            state["bad_epochs"] += 1
    row["seconds"] = round(time.time() - epoch_started, 3)  # training and validation
    state["history"].append(row)
    write_history(args.output, state["history"])
    report.event("epoch_end", **row)
    report.log(format_epoch(row))
    report.mlflow_metrics(row, step=epoch)
    if epoch >= args.epochs:
        return "completed"
    if has_val and args.patience and state["bad_epochs"] >= args.patience:
        report.log(f"early stopping: no lower validation loss for {args.patience} epochs "
                   f"(best: epoch {state['best_epoch']})")
        return "early_stopping"
    if args.time_budget is not None and elapsed() >= args.time_budget:
        report.warn(f"time budget of {args.time_budget:g}s spent after epoch {epoch}/{args.epochs}; stopping")
        return "time_budget"
    if job.falls_behind(state["history"]):
        report.log(f"stopped after epoch {epoch}: its validation loss trails the other trials' median")
        return "early_termination"
    return None


class RunEnd:
    """Reports the run_end event once, from whichever thread ends the run first: the main thread,
    or Dist's watcher thread ending a process that a failure elsewhere left blocked."""

    def __init__(self, report, started):
        self.report, self.started = report, started
        self.lock = threading.Lock()
        self.code = None

    def __call__(self, status, code, error=None):
        """Report the end unless it has been reported; the exit code that was reported."""
        with self.lock:
            if self.code is None:
                self.code = code
                self.report.event("run_end", status=status, seconds=round(time.time() - self.started, 3),
                                  exit_code=code, error=error)
        return self.code


def outcome_of(exc, dist, report):
    """(status, exit code, error) of the run_end event for the exception that ends this process.

    Distributed, a failure is the first one any process posted (Dist.fail): the one that made the
    others fail or stop. Bad data or arguments exit 2 and a diverged loss 1, with one line on
    stderr; anything else (a bug, the machine) exits 1 with its traceback.
    """
    if isinstance(exc, Canceled):
        failure = dist.failure()  # torchrun's agent stops every process once one has failed
        if failure is None:
            report.log(f"canceled by signal {exc.signum}")
            return "canceled", 128 + exc.signum, str(exc)
    elif isinstance(exc, PeerFailed):
        failure = exc.failure
        print(f"error: {exc}", file=sys.stderr, flush=True)
    else:
        expected = isinstance(exc, (UsageError, WeightsError, folder_dataset.DatasetError, Diverged))
        code = 1 if not expected or isinstance(exc, Diverged) else 2
        message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        failure = dist.fail(code, message)
        if failure.message != message:  # e.g. a collective broken by the failed process's exit
            print(f"error: {failure.error} (then here: {message})", file=sys.stderr, flush=True)
        elif expected:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
            sys.stderr.flush()
    return "failed", failure.code, failure.error


def main(argv=None):
    started = time.time()
    dist = Dist.from_env()
    report = Reporter(dist.main)
    end = RunEnd(report, started)
    dist.watch(lambda failure: os._exit(end("failed", failure.code, failure.error)))
    stop = Stop()
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if STARTUP_SIGNALS:
            stop.handle(STARTUP_SIGNALS[0], None)
        args = parse_args(argv)
        run(args, dist, report, started, stop)
        return end("completed", 0)
    except Exception as exc:
        stop.deferred = True  # a SIGTERM now (torchrun stopping every process) must not cut the report short
        return end(*outcome_of(exc, dist, report))
    finally:
        dist.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    # The imports leave some 340,000 objects (torch, torchvision with torch._dynamo and sympy,
    # onnx) that are never garbage. Frozen, the collector no longer walks them in each full
    # collection, nor in the ones the interpreter's exit runs: 1.1 s less at the end of every
    # run on the build machine.
    gc.freeze()
    sys.exit(main())
