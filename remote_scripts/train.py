#!/usr/bin/env python3
"""The training job: a folder-per-label image tree in, a self-describing ONNX classifier out.

    python remote_scripts/train.py --data DIR --output DIR [--checkpoint-dir DIR] [options]

This is the job contract of DESIGN.md 4.1, run unchanged by every backend: a local process, a
Docker container, an Azure ML job, torchrun. Shaped like torchvision's
references/classification/train.py, it is the recipe and reads top to bottom:

  get_args_parser  the flags (options.py, shared with the client) and their checks
  load_data        scan the folder, decode every image once into the cache, split (imagecache.py)
  create_model     torchvision backbone with ImageNet / local / no weights and a new head (models.py)
  train_one_epoch  one pass over the training split
  evaluate         class probabilities, loss and accuracy on a split, sharded across processes
  run              set up, resume, fit (epochs with validation, best weights, early stopping,
                   time budget), finish (test metrics, outputs, model.onnx)
  main             one job process (lifecycle.run_job: signals, run_end, exit codes)

Its machinery lives in modules of its own: modes.py (what each --mode trains and feeds),
featurize.py (linear mode's cached features), checkpoints.py (saving, resuming), lifecycle.py
(signals, the run_end protocol, exit codes), reporting.py (events, log lines, MLflow),
outputs.py (the files of --output), runtime.py (device, processes, precision), export.py (ONNX).

Runs on torch >= 1.13 / torchvision >= 0.14, CPU or CUDA, in one process or many (torchrun and
Azure ML's PyTorch distribution set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""
import argparse
import gc
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

# Started as the job, a SIGTERM during the imports below (torch takes seconds) is kept for main(),
# which ends the run with its run_end event: torchrun's agent stops every process that early when
# one fails at once (bad arguments, no GPU for it).
STARTUP_SIGNALS = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: STARTUP_SIGNALS.append(signum))
    # The imports below make some 340,000 objects that stay for the whole run: no collection
    # walks them while they are being made (they are frozen once made, at the end of this file).
    # 0.3 s less start-up on the build machine; the ~9,000 of them that are garbage (a few MB) stay.
    gc.disable()

import numpy as np
import torch

if not (__spec__ and __spec__.parent):  # started as a file: this folder becomes the package remote_scripts
    import job_package  # noqa: F401
from remote_scripts import folder_dataset, imagecache, metrics, options, packed_dataset
from remote_scripts.checkpoints import (CheckpointWriter, Decision, Position, fingerprint_of, read_checkpoint,
                                       resume, save_checkpoint)
from remote_scripts.export import export_onnx
from remote_scripts.featurize import cached_features
from remote_scripts.imagecache import SKIPPED_IN_EVENTS, Batches
from remote_scripts.lifecycle import Diverged, UsageError, run_job
from remote_scripts.models import build_model, freeze_backbone, load_weights, set_train_mode
from remote_scripts.modes import MODES, Forward
from remote_scripts.outputs import writable_folder, write_history, write_outputs
from remote_scripts.reporting import announce, format_epoch
from remote_scripts.runtime import Precision, compute_threads, resolve_device
from remote_scripts.schedule import class_weights, epoch_batches, epoch_seed, warmup_cosine


# --------------------------------------------------------------------------------------------
# Arguments, and what a run shares with the process it runs in


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
# Model and training


def create_model(args, mode, dataset, weights, device, report):
    """The classifier for `mode` on `device`: backbone frozen unless the mode trains it.

    channels_last: the memory layout oneDNN (CPU) and cuDNN (tensor cores) run convolutions
    fastest in; the weights and every batch use it.
    """
    torch.manual_seed(args.seed)  # the head's initialization
    model = build_model(args.arch, len(dataset.classes), weights, standardize=mode.cached_features,
                        source=args.weights, warn=report.warn)
    if not mode.trains_backbone:
        freeze_backbone(model)
    return model.to(device, memory_format=torch.channels_last)


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


def train_batches(args, mode, dataset, epoch, dist):
    """This process's batches of training indices in `epoch` (no batch of one where BatchNorm trains)."""
    return epoch_batches(dataset.train, args.seed, epoch, dist, args.batch_size, drop_single=mode.trains_backbone)


# --------------------------------------------------------------------------------------------
# The run: set up, resume, fit, finish


@dataclass
class Setup:
    """What a run trains and how, fixed once its data and model are there."""
    mode: object          # modes.Mode
    device: torch.device
    precision: Precision
    dataset: object       # imagecache.DecodedDataset
    model: torch.nn.Module
    trainable: torch.nn.Module  # what learns: the whole model, or its head when the backbone is frozen
    forward: Forward
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: torch.nn.Module
    steps: int            # optimizer steps per epoch in each process
    fingerprint: dict     # what a checkpoint must share with this run (checkpoints.fingerprint_of)
    saved: dict           # the checkpoint this run resumes from, or None
    backbone_graph: bytes  # linear mode: the ONNX graph that featurized, which model.onnx reuses

    def batches_of(self, args, epoch, dist):
        return train_batches(args, self.mode, self.dataset, epoch, dist)


def run(args, dist, report, started, stop, job=None):
    """Train and export one configuration; `job`: what the process shares with it (OneRun)."""
    job = job or OneRun()
    setup = set_up(args, dist, report, job)
    if setup is None:
        return
    state = resume(args, setup, report)
    setup.saved = None  # loaded into the model and optimizer: not held for the whole run
    fit(args, setup, state, dist, report, stop, started, job)
    finish(args, setup, state, dist, report, job)


def set_up(args, dist, report, job):
    """Device, processes, data, model, optimizer and the checkpoint to resume: the Setup, or None
    in a rank left idle (linear mode trains in rank 0 alone)."""
    device = resolve_device(args.device, dist)
    mode = MODES[args.mode or ("full" if device.type == "cuda" else "linear")]
    if dist.world > 1:
        if mode.cached_features:
            # Features are computed once and the head trains in seconds: one process does it all.
            if not dist.main:
                print(f"rank {dist.rank}: --mode linear runs in rank 0 alone", flush=True)
                return None
            report.warn(f"--mode linear runs in one process; the other {dist.world - 1} stay idle")
            dist.world = 1
        else:
            dist.init(device)
    precision = Precision(device, args.precision)
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
    weights = load_weights(args.arch, args.weights)
    if dist.local_rank == 0:
        dist.barrier()
    dataset = job.dataset(args, lambda: load_data(args, dist, report))
    dist.barrier()  # every process has its data: one whose loading failed ends them all here
    model = create_model(args, mode, dataset, weights, device, report)
    del weights
    batches = Batches(dataset, device, channels_last=True)
    fingerprint = fingerprint_of(args, mode, dataset, dist)
    saved = read_checkpoint(args.checkpoint_dir, fingerprint)
    announce(report, args, mode, dataset, device, precision, dist, saved)

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
    groups = [{"params": list(model.head.parameters()), "lr": args.lr}]
    if mode.trains_backbone:
        backbone_lr = args.lr * (options.BACKBONE_LR_FACTOR if args.weights != "none" else 1.0)
        groups.insert(0, {"params": list(model.backbone.parameters()), "lr": backbone_lr})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    steps = len(train_batches(args, mode, dataset, 1, dist))
    total_steps = steps * args.epochs
    scheduler = warmup_cosine(optimizer, total_steps, max(1, min(total_steps // 10, steps)))
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(dataset, device) if args.balance else None,
                                          label_smoothing=args.label_smoothing)
    forward = Forward(mode, model, trained, batches, features, precision, hflip=not args.no_hflip)
    return Setup(mode, device, precision, dataset, model, trainable, forward, optimizer, scheduler, criterion,
                 steps, fingerprint, saved, backbone_graph)


def fit(args, setup, state, dist, report, stop, started, job):
    """The epochs: train, validate, keep the best weights, checkpoint, until a Decision stops them."""
    elapsed_before = state.elapsed

    def elapsed():
        return elapsed_before + time.time() - started

    writer = CheckpointWriter(args.checkpoint_dir if dist.main else None, report)
    report.event("phase", name="train")
    # One throttle for all epochs: ~2 progress events a second however short the epochs are;
    # the end of each epoch is marked by its epoch_end event.
    throttle = report.throttle("train", setup.steps, last=False, epochs=args.epochs)
    dataset, trainable = setup.dataset, setup.trainable
    has_val = len(dataset.val) > 0
    try:
        while state.stopped is None and state.epoch < args.epochs:
            epoch = state.epoch + 1
            epoch_started = time.time()
            set_train_mode(setup.model, setup.mode.trains_backbone)
            partial = state.position if state.position and state.position["epoch"] == epoch else None
            position = Position(epoch, setup.batches_of(args, epoch, dist), epoch_seed(args.seed, epoch, dist.rank),
                                setup.device, partial)
            state.position = None
            if dist.world == 1:  # a mid-epoch stop needs every process at the same step: one process only
                stop.deferred = True
                stop.on_stop = lambda signum: save_checkpoint(writer, setup, state, elapsed(), position, wait=True)
            totals = train_one_epoch(setup.forward, setup.criterion, setup.optimizer, setup.scheduler,
                                     setup.precision, position, stop, throttle)
            stop.at_safe_point()  # a signal during the epoch's last moments (the prefetcher's end)
            stop.undefer()
            loss_sum, correct, seen = dist.all_sum(totals).tolist()
            row = {"epoch": epoch, "epochs": args.epochs, "train_loss": loss_sum / seen,
                   "train_accuracy": correct / seen, "val_loss": None, "val_accuracy": None,
                   "lr": setup.optimizer.param_groups[-1]["lr"], "best": False}
            if has_val:
                setup.model.eval()
                # DDP keeps the parameters equal, not the BatchNorm statistics: each process's last
                # step updated its own. Validate with rank 0's, the ones checkpointed and exported.
                dist.share(trainable.buffers())
                _, row["val_loss"], row["val_accuracy"] = evaluate(
                    setup.forward, dataset.val, dataset.labels[dataset.val], args.batch_size, dist)
            decision = Decision.GO_ON
            if dist.main:
                decision = end_of_epoch(args, row, state, has_val, epoch_started, elapsed, report, job)
                if row["best"]:
                    state.best_weights = {k: v.detach().cpu().clone() for k, v in trainable.state_dict().items()}
            decision = Decision(int(dist.broadcast(decision)))
            if decision is Decision.DIVERGED:  # every process raises; the checkpoint keeps the last finite epoch
                raise Diverged(epoch)
            state.epoch, state.stopped = epoch, decision.stopped
            save_checkpoint(writer, setup, state, elapsed(), best=row["best"])
        state.stopped = state.stopped or Decision.COMPLETED.stopped
    finally:
        stop.deferred, stop.on_stop = True, None  # an in-flight checkpoint lands whole, then a signal counts
        writer.wait()
        stop.deferred = False
    stop.undefer()


def end_of_epoch(args, row, state, has_val, epoch_started, elapsed, report, job):
    """Rank 0: keep the best epoch, record the row, and decide whether to stop."""
    epoch = row["epoch"]
    if not math.isfinite(row["train_loss"]) or (has_val and not math.isfinite(row["val_loss"])):
        return Decision.DIVERGED
    if has_val:
        if row["val_loss"] < state.best_loss:
            state.best_loss, state.best_epoch, state.bad_epochs = row["val_loss"], epoch, 0
            row["best"] = True
        else:
            state.bad_epochs += 1
    row["seconds"] = round(time.time() - epoch_started, 3)  # training and validation
    state.history.append(row)
    write_history(args.output, state.history)
    report.event("epoch_end", **row)
    report.log(format_epoch(row))
    report.mlflow_metrics(row, step=epoch)
    if epoch >= args.epochs:
        return Decision.COMPLETED
    if has_val and args.patience and state.bad_epochs >= args.patience:
        report.log(f"early stopping: no lower validation loss for {args.patience} epochs "
                   f"(best: epoch {state.best_epoch})")
        return Decision.EARLY_STOPPING
    if args.time_budget is not None and elapsed() >= args.time_budget:
        report.warn(f"time budget of {args.time_budget:g}s spent after epoch {epoch}/{args.epochs}; stopping")
        return Decision.TIME_BUDGET
    if job.falls_behind(state.history):
        report.log(f"stopped after epoch {epoch}: its validation loss trails the other trials' median")
        return Decision.EARLY_TERMINATION
    return Decision.GO_ON


def finish(args, setup, state, dist, report, job):
    """Test metrics of the kept weights -> metrics.json and, per image, predictions.csv (every
    process scores its share with rank 0's weights), then rank 0 writes the outputs and exports
    the model (behind linear mode's backbone graph; not when the job keeps no model)."""
    mode, model, dataset = setup.mode, setup.model, setup.dataset
    if state.best_weights is not None:
        setup.trainable.load_state_dict(state.best_weights)
    dist.share(setup.trainable.state_dict().values())
    report.event("phase", name="evaluate")
    evaluated_on, indices = "test", dataset.test
    if not len(indices):
        evaluated_on, indices = ("val", dataset.val) if len(dataset.val) else ("train", dataset.train)
        report.warn(f"no test split (--test-fraction 0): metrics.json is computed on the {evaluated_on} split")
    model.eval()
    throttle = report.throttle("evaluate", len(indices))
    # float32, no autocast: the numbers the exported ONNX model gives
    probabilities, _, _ = evaluate(setup.forward, indices, dataset.labels[indices], args.batch_size, dist,
                                   throttle.update, reduced_precision=False)
    if dist.main:
        if not np.isfinite(probabilities).all():  # e.g. the last step of a run without validation
            raise Diverged(state.epoch)
        result = metrics.classification_metrics(dataset.labels[indices], probabilities, dataset.classes)
        result.update(evaluated_on=evaluated_on, split=dataset.sizes(), skipped=dataset.skipped,
                      best_epoch=state.best_epoch or state.epoch, epochs_completed=state.epoch,
                      stopped=state.stopped, arch=args.arch, mode=mode.name)
        report.log(f"{evaluated_on} accuracy {result['accuracy']:.4f}, macro accuracy {result['macro_accuracy']:.4f}, "
                   f"macro F1 {result['macro_f1']:.4f}, log-loss {result['log_loss']:.4f}")
        # The confusion matrix (classes^2 numbers: megabytes for 1000 classes) is in metrics.json only.
        report.event("metrics", **{k: v for k, v in result.items() if k not in ("confusion_matrix", "skipped")},
                     skipped=dataset.skipped[:SKIPPED_IN_EVENTS])
        report.mlflow_metrics({f"test_{k}": result[k] for k in metrics.HEADLINE_METRICS}, step=state.epoch)
        report.event("phase", name="export")
        export = job.exports_model(state.history)
        write_outputs(args.output, dataset, indices, probabilities, result, state.history, report, export_model=(
            lambda path: export_onnx(model, path, dataset.classes, dataset.spec, args.arch, mode.name,
                                     backbone=setup.backbone_graph)) if export else None)
    dist.barrier()


def main(argv=None):
    return run_job(lambda dist, report, started, stop: run(parse_args(argv), dist, report, started, stop),
                   STARTUP_SIGNALS)


if __name__ == "__main__":
    # The imports leave some 340,000 objects (torch, torchvision with torch._dynamo and sympy,
    # onnx) that are never garbage. Frozen, the collector no longer walks them in each full
    # collection, nor in the ones the interpreter's exit runs: 1.1 s less at the end of every
    # run on the build machine.
    gc.freeze()
    gc.enable()
    sys.exit(main())
