"""Benchmark for a lent GPU: the training job's full mode and featurizing against plain torch loops.

Started by benchmarks/gpu.sh (see there and the README's Benchmarks section). Everything runs in
one short command, well inside the device tool's budget: generated JPEGs (made in parallel),
then each side in a process of its own, like a user's script, on the same card.

(a) full-mode training, ResNet50 at 224 px, `--weights none`, AdamW, the same batch size on both
    sides: `train.py --mode full --precision auto --device cuda` (bf16 from compute capability
    8.0 on, fp16 with loss scaling before) against a plain torchvision AMP loop (ImageFolder +
    RandomResizedCrop + flip through a DataLoader with pinned memory, channels_last, autocast
    in the same dtype, GradScaler for fp16, cudnn.benchmark as the job sets it). No validation
    split (--val-fraction 0), so an epoch is training only on both sides, like NVIDIA's
    published figures; images/s of a steady epoch: epochs 2..E (the first pays cuDNN's
    autotuning and the workers' start), median. Also: the same plain step on one batch already
    on the GPU (the model's ceiling on this card, no input pipeline), and where the job's whole
    command spends its time.
(b) featurizing (linear mode's frozen backbone): remote_scripts/featurize.featurize over the
    job's decoded cache against a plain eval loop (ImageFolder + Resize through a DataLoader,
    inference_mode, channels_last) under autocast, and the same loop in fp32 (the job's
    arithmetic: linear mode's features are float32, so cuDNN's default TF32 convolutions on
    Ampere and newer); alternating `--repeats` times after a warm-up pass of each; medians.

Published references printed for context: NVIDIA's ResNet50 AMP training, 2,470 images/s on one
A100 and 1,200 on a V100.

`--smoke` runs tiny sizes on the CPU (no GPU needed): it checks the script, not the speed.
Without it, no CUDA device is a one-line error and exit 1.

Run: bash benchmarks/gpu.sh [--smoke] [--images 6000] [--epochs 5] [--batch-size 256] [--repeats 3]
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN_SCRIPT = REPO / "remote_scripts" / "train.py"
CLASSES = 10
SEED = 0
TEST_FRACTION = 0.05  # the job's test pass runs once, after the timed epochs
REFERENCES = {"A100": 2470, "V100": 1200}  # NVIDIA's ResNet50 AMP training, images/s on one GPU
FULL = {"arch": "resnet50", "images": 6000, "source_size": 256, "image_size": 224, "batch_size": 256, "epochs": 5,
        "repeats": 3, "ceiling_steps": 30}
# A smaller network and the smallest input the job takes: the smoke run checks the script in seconds.
SMOKE = {"arch": "resnet18", "images": 20, "source_size": 24, "image_size": 16, "batch_size": 8, "epochs": 2,
         "repeats": 1, "ceiling_steps": 2}


# --------------------------------------------------------------------------------------------
# Data


def write_images(root, size, numbers):
    """root/classNN/img_NNNNN.jpg for each of `numbers`: a base colour per class plus noise."""
    import numpy as np

    from tests.imagegen import colour_of, picture

    for number in numbers:
        name = f"class{number % CLASSES:02d}"
        rng = np.random.default_rng(SEED + number)
        picture(colour_of(name), size, rng).save(Path(root) / name / f"img_{number:05d}.jpg", "JPEG", quality=90)


def make_images(root, count, size, processes):
    """`count` JPEGs of size x size in CLASSES class folders, written by `processes` processes
    (spawned: this process may have started CUDA, which a forked child must not inherit)."""
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    chunks = [range(start, count, processes) for start in range(processes)]
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(write_images, [root] * processes, [size] * processes, chunks))
    return root


# --------------------------------------------------------------------------------------------
# What both sides share


def amp_dtype(device):
    """The autocast dtype the job's --precision auto picks (runtime.Precision), by the same rule:
    bf16 on GPUs from compute capability 8.0, fp16 before; on a CPU bf16 where it is native,
    else None (fp32)."""
    import torch

    from remote_scripts.runtime import native_bf16_cpu

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return torch.bfloat16 if native_bf16_cpu() else None


def dtype_name(dtype):
    """bf16, fp16 or fp32: the names the job's --precision uses."""
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), "fp32")


def autocast(device, dtype):
    import contextlib

    import torch

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_transforms(size, train):
    from torchvision import transforms

    from remote_scripts import imagecache, imaging

    normalize = transforms.Normalize(imaging.IMAGENET_MEAN, imaging.IMAGENET_STD)
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(size, scale=imagecache.CROP_SCALE),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), normalize])


def loader(dataset, config, device, shuffle, drop_last=False):
    """The plain loops' DataLoader: config's loader_workers processes (see shared_memory_workers)."""
    import torch

    workers = config["loader_workers"]
    return torch.utils.data.DataLoader(dataset, batch_size=config["batch_size"], shuffle=shuffle, num_workers=workers,
                                       pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                       drop_last=drop_last)


def shared_memory_workers(workers, config):
    """How many DataLoader workers /dev/shm holds: each hands its float batches to the main
    process there, two batches ahead (prefetch_factor) -- 154 MB a batch of 256 at 224 px, so 16
    workers hold about 5 GB, more than a container's default 64 MB allows. Fewer workers rather
    than a Bus error halfway through a device lease."""
    import shutil

    batch_bytes = config["batch_size"] * 3 * config["image_size"] ** 2 * 4
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return workers
    return min(workers, free // (3 * batch_bytes))  # 0: batches made in the main process, none in /dev/shm


# --------------------------------------------------------------------------------------------
# (a) training: the job, the plain AMP loop, the ceiling


def run_job(data, work, config, device, workers, log):
    """train.py --mode full in a process of its own: (wall seconds, events, history rows, start
    time); its output goes to `log`."""
    out = work / "job-out"
    command = [sys.executable, str(TRAIN_SCRIPT), "--data", str(data), "--output", str(out),
               "--cache-dir", str(work / "cache"), "--mode", "full", "--device", device, "--precision", "auto",
               "--arch", config["arch"], "--weights", "none", "--image-size", str(config["image_size"]),
               "--batch-size", str(config["batch_size"]), "--epochs", str(config["epochs"]), "--patience", "0",
               "--val-fraction", "0", "--test-fraction", str(TEST_FRACTION), "--workers", str(workers)]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        raise SystemExit(f"gpu.sh: train.py failed ({result.returncode}), see {log}:\n{result.stderr[-3000:]}")
    from remote_scripts import progress

    events = [json.loads(line[len(progress.PREFIX):]) for line in result.stdout.splitlines()
              if line.startswith(progress.PREFIX)]
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return wall, events, rows, started


def plain_train(data, train_count, config, device_name):
    """The plain AMP fine-tuning loop on the first `train_count` images of a seeded shuffle (the
    job's training split size): each epoch's seconds (training only, the GPU synchronized at
    its end), then the same step on one batch already on the device (the ceiling)."""
    import torch
    import torchvision
    from torchvision import datasets

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the job sets it
    torch.manual_seed(SEED)
    dataset = datasets.ImageFolder(data, plain_transforms(config["image_size"], train=True))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SEED)).tolist()
    # No batch of one, where BatchNorm cannot train (the job leaves it out too).
    train_loader = loader(torch.utils.data.Subset(dataset, order[:train_count]), config, device, shuffle=True,
                          drop_last=train_count % config["batch_size"] == 1)
    model = getattr(torchvision.models, config["arch"])(weights=None, num_classes=len(dataset.classes))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(x, y):
        with autocast(device, dtype):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    seconds = []
    for _ in range(config["epochs"]):
        started, seen = time.perf_counter(), 0
        for x, y in train_loader:
            step(x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                 y.to(device, non_blocking=True))
            seen += len(y)
        synchronize(device)
        seconds.append(time.perf_counter() - started)

    x = torch.randn(config["batch_size"], 3, config["image_size"], config["image_size"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(dataset.classes), (config["batch_size"],), device=device)
    for _ in range(3):
        step(x, y)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(config["ceiling_steps"]):
        step(x, y)
    synchronize(device)
    ceiling = config["ceiling_steps"] * config["batch_size"] / (time.perf_counter() - started)
    return {"epoch_seconds": seconds, "train": seen, "dtype": dtype_name(dtype), "ceiling": ceiling}


def run_child(flag, data, config, workers, device, *extra):
    """This script in a process of its own for `flag`: (wall seconds, the JSON it printed last)."""
    command = [sys.executable, __file__, flag, "--data", str(data), "--config", json.dumps(config),
               "--workers", str(workers), "--device", device, *map(str, extra)]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"gpu.sh: {flag[2:]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.time() - started, json.loads(result.stdout.splitlines()[-1])


def section_train(data, work, config, workers, device, out):
    from train_throughput import phases  # beside this script

    print(f"\n(a) full-mode training: {config['arch']} at {config['image_size']} px, --weights none, batch "
          f"{config['batch_size']}, AdamW, {config['epochs']} epochs, training only (no validation split); steady = "
          f"epochs 2..{config['epochs']}, median", flush=True)
    wall, events, history, started = run_job(data, work, config, device, workers, out / "job.log")
    start = next(e for e in events if e["type"] == "run_start")
    job = {"wall": wall, "epoch_seconds": [row["seconds"] for row in history], "train": start["split"]["train"],
           "precision": start["config"]["precision"], "device": start["device"],
           "phases": phases(events, started, started + wall)}
    if device == "cuda" and not (job["device"].startswith("cuda") and job["precision"] in ("bf16", "fp16")):
        raise SystemExit(f"gpu.sh: the job ran on {job['device']} in {job['precision']}, not on the GPU in 16 bits")
    (out / "job.json").write_text(json.dumps(job, indent=2))  # kept should the plain side fail
    plain_wall, plain = run_child("--plain-train", data, config, workers, device, "--train-count", job["train"])
    plain["wall"] = plain_wall
    for side in (job, plain):
        side["steady_rate"] = side["train"] / statistics.median(side["epoch_seconds"][1:])
    rows = [(f"train.py --precision auto ({job['precision']})", job, f"{job['wall']:.1f} s whole command"),
            (f"plain torchvision AMP loop ({plain['dtype']})", plain, f"{plain['wall']:.1f} s whole script")]
    print(f"  {'':<40}{'epoch seconds':>30}{'steady img/s':>14}")
    for label, side, note in rows:
        print(f"  {label:<40}{' '.join(f'{s:.2f}' for s in side['epoch_seconds']):>30}{side['steady_rate']:>14.1f}"
              f"  ({note})")
    print(f"  {'the plain step on one resident batch':<40}{'':>30}{plain['ceiling']:>14.1f}  (no input pipeline: "
          "the model's ceiling here)")
    ratio = job["steady_rate"] / plain["steady_rate"]
    print(f"  ratio job / plain loop {ratio:.2f}x; job / ceiling {job['steady_rate'] / plain['ceiling']:.2f}; "
          f"job on {job['device']}")
    print("  published, for context: NVIDIA ResNet50 AMP training " +
          ", ".join(f"{rate:,} img/s on one {card}" for card, rate in REFERENCES.items()))
    print("  where the job's command spends its time (s): " +
          ", ".join(f"{name} {seconds:.1f}" for name, seconds in job["phases"].items()))
    return {"job": job, "plain": plain, "ceiling": plain["ceiling"], "ratio": ratio,
            "ratio_to_ceiling": job["steady_rate"] / plain["ceiling"]}


# --------------------------------------------------------------------------------------------
# (b) featurizing


def measure_featurize(data, cache, config, workers, device_name):
    """In one process: the job's featurize.featurize and the plain eval loop (autocast, then
    fp32) take turns `repeats` times after a warm-up pass of each; images/s of each pass, and
    the backbone alone on one resident batch in both arithmetics."""
    import numpy as np
    import torch
    import torchvision
    from torchvision import datasets

    from quiet_report import QuietReport  # beside this script
    from remote_scripts import featurize, train
    from remote_scripts.imagecache import Batches
    from remote_scripts.modes import MODES
    from remote_scripts.runtime import Dist

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what the job's set_up does on a GPU
    batch = config["batch_size"]
    # The job's own decoded cache (same data and size): featurizing reads it, no decoding.
    args = train.parse_args(["--data", str(data), "--output", str(Path(cache).parent), "--mode", "linear",
                             "--device", device_name, "--arch", config["arch"], "--weights", "none",
                             "--image-size", str(config["image_size"]), "--batch-size", str(batch),
                             "--val-fraction", "0", "--test-fraction", str(TEST_FRACTION),
                             "--cache-dir", str(cache), "--workers", str(workers)])
    report = QuietReport()
    dataset = train.load_data(args, Dist(), report)
    model = train.create_model(args, MODES["linear"], dataset, None, device, report)
    batches = Batches(dataset, device, channels_last=True)
    everything = np.arange(len(dataset.paths))

    torch.manual_seed(SEED)
    plain_model = getattr(torchvision.models, config["arch"])(weights=None)
    plain_model.fc = torch.nn.Identity()
    plain_model = plain_model.to(device, memory_format=torch.channels_last).eval()
    plain_loader = loader(datasets.ImageFolder(data, plain_transforms(config["image_size"], train=False)), config,
                          device, shuffle=False)
    dtype = amp_dtype(device)

    def ours():
        started = time.perf_counter()
        featurize.featurize(model, batches, everything, batch, report)  # features on the host at its end
        return len(everything) / (time.perf_counter() - started)

    def plain(reduced):
        started = time.perf_counter()
        with torch.inference_mode(), autocast(device, dtype if reduced else None):
            features = torch.cat([plain_model(x.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last)).float().cpu() for x, _ in plain_loader])
        return len(features) / (time.perf_counter() - started)

    ours(), plain(True), plain(False)  # warm-up: cuDNN's autotuning, the loader's workers
    rates = {"job": [], "plain_amp": [], "plain_fp32": []}
    for _ in range(config["repeats"]):
        rates["job"].append(ours())
        rates["plain_amp"].append(plain(True))
        rates["plain_fp32"].append(plain(False))

    def ceiling(reduced):
        x = torch.randn(batch, 3, config["image_size"], config["image_size"], device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, dtype if reduced else None):
            for _ in range(3):
                plain_model(x)
            synchronize(device)
            started = time.perf_counter()
            for _ in range(config["ceiling_steps"]):
                plain_model(x)
            synchronize(device)
        return config["ceiling_steps"] * batch / (time.perf_counter() - started)

    return {**rates, "images": len(everything), "dtype": dtype_name(dtype),
            "tf32_convolutions": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
            "ceiling_amp": ceiling(True), "ceiling_fp32": ceiling(False)}


def section_featurize(data, work, config, workers, device):
    print(f"\n(b) featurizing: {config['repeats']} alternating passes over every image at batch "
          f"{config['batch_size']}, after a warm-up pass of each; medians", flush=True)
    _, found = run_child("--measure-featurize", data, config, workers, device, "--cache", work / "cache")
    medians = {side: statistics.median(found[side]) for side in ("job", "plain_amp", "plain_fp32")}
    fp32 = "fp32" + (" (cuDNN's default TF32 convolutions)" if found["tf32_convolutions"] else "")
    rows = [(f"featurize.featurize ({fp32}, the decoded cache)", "job"),
            (f"plain eval loop, autocast {found['dtype']}", "plain_amp"),
            (f"plain eval loop, {fp32}", "plain_fp32")]
    for label, side in rows:
        print(f"  {label:<64}{medians[side]:>10.1f} img/s  (passes: {', '.join(f'{r:.0f}' for r in found[side])})")
    print(f"  the backbone alone on one resident batch: {found['ceiling_amp']:.1f} img/s in {found['dtype']}, "
          f"{found['ceiling_fp32']:.1f} in fp32")
    ratio = medians["job"] / medians["plain_amp"]
    print(f"  ratio job / plain autocast loop {ratio:.2f}x; job / plain fp32 loop "
          f"{medians['job'] / medians['plain_fp32']:.2f}x")
    return {**found, "medians": medians, "ratio": ratio, "ratio_fp32": medians["job"] / medians["plain_fp32"]}


# --------------------------------------------------------------------------------------------
# The run


def describe_card(smoke):
    """(device for the job, its description); exits with one line when a GPU run finds no CUDA device."""
    import torch

    if smoke:
        return "cpu", f"CPU (smoke mode: tiny sizes, not a measurement), torch {torch.__version__}"
    if not torch.cuda.is_available():
        raise SystemExit(f"gpu.sh: no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda}); "
                         "run it on a GPU machine, or with --smoke on a CPU")
    major, minor = torch.cuda.get_device_capability(0)
    return "cuda", (f"{torch.cuda.get_device_name(0)} (compute capability {major}.{minor}), torch "
                    f"{torch.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-results", help="gpu.json and job.log go here")
    parser.add_argument("--images", type=int)
    parser.add_argument("--source-size", type=int, help="the generated JPEGs' side, px")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--arch", help="a torchvision classifier the job knows (default: resnet50)")
    parser.add_argument("--workers", type=int, help="DataLoader processes and the job's decode workers")
    # the child processes
    parser.add_argument("--plain-train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure-featurize", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--train-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_train or args.measure_featurize:
        config = json.loads(args.config)
        if args.plain_train:
            found = plain_train(args.data, args.train_count, config, args.device)
        else:
            found = measure_featurize(args.data, args.cache, config, args.workers, args.device)
        print(json.dumps(found))
        return

    began = time.time()
    smoke = args.smoke or os.environ.get("GPU_SMOKE") == "1"
    config = dict(SMOKE if smoke else FULL)
    for name in ("arch", "images", "source_size", "image_size", "batch_size", "epochs", "repeats"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    if config["epochs"] < 2:
        raise SystemExit("gpu.sh: --epochs must be at least 2 (the first is warm-up)")
    device, card = describe_card(smoke)
    cpus = len(os.sched_getaffinity(0))
    workers = args.workers if args.workers is not None else cpus
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config["loader_workers"] = shared_memory_workers(workers, config)
    print(f"on {card}; {cpus} CPUs; {workers} workers (the job's decoding, the plain loops' DataLoaders"
          + (f"; {config['loader_workers']} for the DataLoaders: all that /dev/shm holds" if
             config["loader_workers"] < workers else "") + ")", flush=True)
    results = {"card": card, "smoke": smoke, "config": config, "workers": workers,
               "references": {"source": "NVIDIA ResNet50 AMP training, images/s on one GPU", **REFERENCES}}

    def save():
        """gpu.json as far as it got: a later section's failure keeps the earlier's numbers."""
        results["seconds"] = time.time() - began
        (out / "gpu.json").write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        started = time.time()
        data = make_images(work / "images", config["images"], config["source_size"], max(1, min(cpus, 16)))
        print(f"{config['images']} generated {config['source_size']} px JPEGs in {CLASSES} classes, "
              f"{time.time() - started:.1f} s", flush=True)
        results["train"] = section_train(data, work, config, workers, device, out)
        save()
        results["featurize"] = section_featurize(data, work, config, workers, device)
    save()
    print(f"\n{results['seconds']:.0f} s in all; {out / 'gpu.json'}", flush=True)


if __name__ == "__main__":
    main()
