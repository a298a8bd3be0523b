"""Benchmark: the training job's speed on this CPU against plain torchvision loops, side by side.

Generated data: 64x64 JPEGs (quality 90) in 10 classes, 2,000 by default (`--images`). Every run of
the job gets a fresh --cache-dir, so it decodes and hashes everything, as a first run does. All
runs: ResNet50, --weights none (no download here), --image-size 64, --batch-size 32, the same
number of workers (decode threads for the job, DataLoader processes for the plain loops: the CPUs
this process may use).

(a) full mode, `train.py --mode full --epochs E` on a `--full-images` subset (1,000 by default,
    E = 3), against a plain torchvision script: ImageFolder + RandomResizedCrop + flip through a
    DataLoader (persistent workers), the same model, AdamW, a validation pass every epoch, a
    test pass and torch.save at the end. Images/s of a steady epoch (epochs 2..E, median;
    training images over the epoch's seconds, validation included on both sides: the job's
    history.jsonl `seconds`, the plain script's own clock); and the whole command's wall time
    against the plain script's. The job runs twice: its default `--precision auto` (bf16 where the
    CPU has it in hardware, as this one does) and `--precision fp32`, the plain loop's arithmetic.
    Targets: per steady epoch at least as fast (>= 1.0x); whole command at most 1.15x.
(b) featurize: images/s of the job's featurize.featurize over the cached images (the graph export
    and ONNX Runtime session included, when onnxruntime is installed) against a plain inference
    loop (ImageFolder + Resize + DataLoader, model.eval(), torch.no_grad(), float32), in one
    process, alternating `--repeats` times, after a warm-up pass of each; medians. Also shown:
    its loop alone, without the graph export (which a run needs for model.onnx anyway), and the
    export's cold cost. The features of both are compared (same weights, same pixels).
    Target >= 1.4x.
(c) linear mode, the whole `train.py --mode linear --epochs 20` command (process start to exit)
    against one plain featurization pass over the same images (its loop; the whole plain
    script's wall time is printed too), alternating, `--repeats` times; medians. Target <= 1.3x.
    Where the job's time goes is printed from its events: start-up (process start to the first
    event: interpreter, torch, torchvision and onnx imports), scan (hashing and decoding),
    featurize, the 20 head epochs, evaluation, export and outputs, exit (interpreter shutdown).
`--compile` also measures what torch.compile (where it exists: not on torch 1.13) costs and gives
for featurizing, against the same backbone in eager mode: the first call with an empty inductor
cache (the compile a first run pays), the steady images/s over full batches, and the recompile
that the smaller last batch costs.

The build machine is shared with other engineers' tests, so a phase can run several times
slower while another process holds a core: each comparison runs its two sides alternately in the
same run and reports medians.

Run: .venv/bin/python benchmarks/train_throughput.py [--images 2000] [--full-images 1000]
     [--full-epochs 3] [--repeats 3] [--only full,featurize,linear] [--compile] [--json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from remote_scripts import imagecache, imaging, progress  # noqa: E402
from tests.imagegen import colour_of, picture  # noqa: E402
from quiet_report import QuietReport  # noqa: E402  (beside this script)

TRAIN_SCRIPT = REPO / "remote_scripts" / "train.py"
CLASSES = 10
SIZE = 64
BATCH = 32
HEAD_EPOCHS = 20
SEED = 0
TARGETS = {"full_epoch": (1.0, ">="), "full_command": (1.15, "<="), "featurize": (1.4, ">="), "linear": (1.3, "<=")}


# --------------------------------------------------------------------------------------------
# Data


def make_images(root, count):
    """root/classNN/img_NNNN.jpg: `count` 64x64 JPEGs, a base colour per class plus noise."""
    rng = np.random.default_rng(SEED)
    for i in range(count):
        name = f"class{i % CLASSES:02d}"
        (root / name).mkdir(parents=True, exist_ok=True)
        picture(colour_of(name), SIZE, rng).save(root / name / f"img_{i:05d}.jpg", "JPEG", quality=90)
    return root


def subset(root, target, count):
    """The first `count` images of `root` (as many per class), hard-linked under `target`."""
    for name in sorted(os.listdir(root)):
        (target / name).mkdir(parents=True)
        for file in sorted(os.listdir(root / name))[:count // CLASSES]:
            os.link(root / name / file, target / name / file)
    return target


# --------------------------------------------------------------------------------------------
# The job


def run_job(data, work, mode, epochs, *extra):
    """Run train.py in a process of its own with a fresh cache folder: (wall seconds, events,
    history rows, the process start time)."""
    out = Path(tempfile.mkdtemp(prefix=f"{mode}-out-", dir=work))
    cache = tempfile.mkdtemp(prefix=f"{mode}-cache-", dir=work)  # fresh: everything is decoded
    command = [sys.executable, str(TRAIN_SCRIPT), "--data", str(data), "--output", str(out), "--cache-dir", cache,
               "--mode", mode, "--epochs", str(epochs), "--arch", "resnet50", "--weights", "none",
               "--image-size", str(SIZE), "--batch-size", str(BATCH), "--patience", "0", *extra]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode:
        raise RuntimeError(f"train.py {' '.join(command[2:])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    events = [json.loads(line[len(progress.PREFIX):]) for line in result.stdout.splitlines()
              if line.startswith(progress.PREFIX)]
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return wall, events, rows, started


def phases(events, started, ended):
    """Seconds per part of a run, from its events: start-up (process start to the first event),
    then each phase up to the next one (export including the outputs, up to run_end), and exit
    (run_end to the end of the process: the interpreter's shutdown)."""
    marks = [("start-up", started)] + [(e["name"], e["time"]) for e in events if e["type"] == "phase"]
    marks += [("exit", next(e["time"] for e in events if e["type"] == "run_end")), ("end", ended)]
    return {name: round(after - at, 2) for (name, at), (_, after) in zip(marks, marks[1:])}


# --------------------------------------------------------------------------------------------
# Plain torchvision baselines (each run in a process of its own, like a user's script)


def plain_transforms(train):
    from torchvision import transforms

    normalize = transforms.Normalize(imaging.IMAGENET_MEAN, imaging.IMAGENET_STD)
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(SIZE, scale=imagecache.CROP_SCALE),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    return transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor(), normalize])


def plain_full(data, epochs, workers, out):
    """The plain fine-tuning script: 80/10/10 random split, AdamW, validation every epoch, a test
    pass, torch.save. Returns each epoch's seconds (training + validation) and the split sizes."""
    import torch
    import torchvision
    from torchvision import datasets

    torch.manual_seed(SEED)
    train_set = datasets.ImageFolder(data, plain_transforms(train=True))
    eval_set = datasets.ImageFolder(data, plain_transforms(train=False))
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(SEED)).tolist()
    held = round(0.1 * len(order))
    test, val, train = order[:held], order[held:2 * held], order[2 * held:]

    def loader(dataset, indices, shuffle):
        return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=BATCH,
                                           shuffle=shuffle, num_workers=workers, persistent_workers=workers > 0)

    train_loader, val_loader, test_loader = loader(train_set, train, True), loader(eval_set, val, False), \
        loader(eval_set, test, False)
    model = torchvision.models.resnet50(weights=None, num_classes=len(train_set.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()

    def evaluate(data_loader):
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in data_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        return correct

    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in train_loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        evaluate(val_loader)
        seconds.append(time.perf_counter() - started)
    evaluate(test_loader)
    torch.save(model.state_dict(), out)
    return {"epoch_seconds": seconds, "train": len(train), "val": len(val)}


def plain_featurize_pass(data, workers, model=None):
    """One plain inference pass: (features [N, D] in ImageFolder's order, loop seconds)."""
    import torch
    import torchvision
    from torchvision import datasets

    if model is None:
        torch.manual_seed(SEED)  # the job's --weights none initialization (train.create_model)
        model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
    model.eval()
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(data, plain_transforms(train=False)),
                                         batch_size=BATCH, num_workers=workers)
    started = time.perf_counter()
    with torch.no_grad():
        features = torch.cat([model(x) for x, _ in loader])
    return features, time.perf_counter() - started


def plain_script(kind, data, workers, epochs, out):
    """The child process's work: a plain script, timed by itself."""
    if kind == "full":
        return plain_full(data, epochs, workers, out)
    _, seconds = plain_featurize_pass(data, workers)
    return {"seconds": seconds}


def run_plain(kind, data, workers, work, epochs=0):
    """(wall seconds, its own report) of a plain script started as a process of its own."""
    out = work / f"plain-{kind}-{time.time_ns()}.pt"
    command = [sys.executable, __file__, "--plain", kind, "--data", str(data), "--workers", str(workers),
               "--full-epochs", str(epochs), "--out", out]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if result.returncode:
        raise RuntimeError(f"the plain {kind} script failed:\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout.splitlines()[-1])


# --------------------------------------------------------------------------------------------
# (b) featurize, in one process


def measure_featurize(data, workers, repeats, work, try_compile):
    """Alternate the job's featurize and the plain loop `repeats` times, after a warm-up of each."""
    import torch

    from remote_scripts import featurize, train
    from remote_scripts.modes import MODES
    from remote_scripts.runtime import Dist, compute_threads

    torch.set_num_threads(compute_threads(1))  # what train.run sets on a CPU, one process
    args = train.parse_args(["--data", str(data), "--output", str(work), "--mode", "linear", "--arch", "resnet50",
                             "--weights", "none", "--image-size", str(SIZE), "--batch-size", str(BATCH),
                             "--cache-dir", tempfile.mkdtemp(prefix="featurize-cache-", dir=work),
                             "--workers", str(workers)])
    report = QuietReport()
    dataset = train.load_data(args, Dist(), report)
    model = train.create_model(args, MODES["linear"], dataset, None, torch.device("cpu"), report)
    batches = imagecache.Batches(dataset, torch.device("cpu"), channels_last=True)
    everything = np.arange(len(dataset.paths))
    torch.manual_seed(SEED)
    import torchvision
    plain_model = torchvision.models.resnet50(weights=None)
    plain_model.fc = torch.nn.Identity()

    def setup():
        """Seconds of featurize's graph export and session start (zero with torch)."""
        started = time.perf_counter()
        graph, session = featurize.backbone_in_onnx_runtime(model, batches, torch.get_num_threads())
        return time.perf_counter() - started, "onnxruntime" if session is not None else "torch"

    cold_setup, engine = setup()  # what a run pays: the exporter's first use in the process
    featurize.featurize(model, batches, everything[:4 * BATCH], BATCH, report)  # warm-up (first-call costs)
    plain_featurize_pass(data, workers, plain_model)
    ours, ours_loop, plain = [], [], []
    for _ in range(repeats):
        seconds_setup, _ = setup()
        started = time.perf_counter()
        features, _ = featurize.featurize(model, batches, everything, BATCH, report)
        seconds = time.perf_counter() - started
        ours.append(len(everything) / seconds)
        ours_loop.append(len(everything) / (seconds - seconds_setup))
        plain_features, seconds = plain_featurize_pass(data, workers, plain_model)
        plain.append(len(everything) / seconds)
    # ImageFolder's order (sorted class folders, then sorted files) is the cache's sorted relative paths.
    difference = float((features - plain_features).abs().max())
    result = {"ours": ours, "ours_loop": ours_loop, "plain": plain, "engine": engine, "cold_setup_seconds": cold_setup,
              "max_feature_difference": difference, "images": len(everything)}
    if try_compile:
        result["compile"] = measure_compile(model, batches, everything)
    return result


def measure_compile(model, batches, everything):
    """torch.compile of the backbone for inference against the same backbone in eager mode
    (channels_last, inference_mode: the job's torch path): the compiling first call, the
    images/s of both over the full batches, and the recompile a smaller last batch costs."""
    import torch

    if not hasattr(torch, "compile"):
        return {"available": False}
    full = [everything[i:i + BATCH] for i in range(0, len(everything) - BATCH + 1, BATCH)]

    def rate(backbone):
        started = time.perf_counter()
        with torch.inference_mode():
            for idx in full:
                backbone(batches.images(idx))
        return len(full) * BATCH / (time.perf_counter() - started)

    eager = rate(model.backbone)
    compiled = torch.compile(model.backbone)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(batches.images(full[0]))
    compile_seconds = time.perf_counter() - started
    compiled_rate = rate(compiled)
    result = {"available": True, "compile_seconds": compile_seconds, "images_per_second": compiled_rate,
              "eager_images_per_second": eager}
    rest = everything[len(full) * BATCH:]
    if len(rest):
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(batches.images(rest))
        result["last_batch_seconds"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------
# Report


def load():
    """The machine's load average: how busy other processes kept the shared CPUs."""
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def verdict(name, ratio):
    target, sense = TARGETS[name]
    passed = ratio >= target if sense == ">=" else ratio <= target
    return f"{ratio:.2f}x (target {sense} {target:g}x) {'PASS' if passed else 'MISS'}"


def section_full(data, workers, work, epochs, results):
    print(f"\n(a) full mode: {epochs} epochs on {sum(1 for _ in data.rglob('*.jpg'))} images, steady = epochs "
          f"2..{epochs}; {load()}", flush=True)
    plain_wall, plain = run_plain("full", data, workers, work, epochs)
    rows = {}
    for precision in ("auto", "fp32"):
        wall, events, history, _ = run_job(data, work, "full", epochs, "--precision", precision)
        start = next(e for e in events if e["type"] == "run_start")
        rows[precision] = {"wall": wall, "epoch_seconds": [row["seconds"] for row in history],
                           "train": start["split"]["train"], "precision": start["config"]["precision"]}
    plain_rate = plain["train"] / statistics.median(plain["epoch_seconds"][1:])
    print(f"  {'':<34}{'epoch seconds':>24}{'steady img/s':>14}{'wall s':>9}")
    print(f"  {'plain ImageFolder + DataLoader':<34}{' '.join(f'{s:.1f}' for s in plain['epoch_seconds']):>24}"
          f"{plain_rate:>14.1f}{plain_wall:>9.1f}")
    for precision, row in rows.items():
        rate = row["train"] / statistics.median(row["epoch_seconds"][1:])
        label = f"train.py --precision {precision} ({row['precision']})"
        print(f"  {label:<34}{' '.join(f'{s:.1f}' for s in row['epoch_seconds']):>24}{rate:>14.1f}{row['wall']:>9.1f}")
        row.update(steady_rate=rate, epoch_ratio=rate / plain_rate, command_ratio=row["wall"] / plain_wall)
    for precision, row in rows.items():
        print(f"  --precision {precision}: per steady epoch {verdict('full_epoch', row['epoch_ratio'])}; "
              f"whole command {verdict('full_command', row['command_ratio'])}")
    results["full"] = {"plain": {"wall": plain_wall, **plain, "steady_rate": plain_rate}, "ours": rows}


def section_featurize(data, workers, work, repeats, try_compile, results):
    print(f"\n(b) featurize: {repeats} alternating passes over the cached images, after a warm-up; {load()}",
          flush=True)
    command = [sys.executable, __file__, "--measure-featurize", "--data", str(data), "--workers", str(workers),
               "--repeats", str(repeats), "--out", str(work)] + (["--compile"] if try_compile else [])
    # An empty inductor cache: the compile a first run on a machine pays (later ones reuse it).
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-", dir=work)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"measuring featurize failed:\n{result.stderr[-3000:]}")
    found = json.loads(result.stdout.splitlines()[-1])
    ours, plain = statistics.median(found["ours"]), statistics.median(found["plain"])
    print(f"  plain loop (ImageFolder + DataLoader, no_grad, fp32): {plain:7.1f} img/s  "
          f"(passes: {', '.join(f'{r:.0f}' for r in found['plain'])})")
    print(f"  featurize.featurize ({found['engine']}, fp32):{'':<14}{ours:7.1f} img/s  "
          f"(passes: {', '.join(f'{r:.0f}' for r in found['ours'])}; graph export and session start included)")
    loop = statistics.median(found["ours_loop"])
    print(f"  ... its loop alone:{'':<34}{loop:7.1f} img/s  (the graph is model.onnx's backbone: a run "
          f"exports it once either way; {found['cold_setup_seconds']:.1f} s cold, in the first call of a run)")
    print(f"  features: largest difference from the plain loop's {found['max_feature_difference']:.2e}")
    print(f"  ratio {verdict('featurize', ours / plain)}; loop alone {loop / plain:.2f}x")
    if "compile" in found:
        compiled = found["compile"]
        if compiled["available"]:
            print(f"  torch.compile of the backbone: first call {compiled['compile_seconds']:.1f} s, then "
                  f"{compiled['images_per_second']:.1f} img/s against {compiled['eager_images_per_second']:.1f} "
                  f"in eager mode; the smaller last batch took {compiled.get('last_batch_seconds', 0):.1f} s "
                  "(a recompile)")
        else:
            print("  torch.compile: not in this torch")
    found.update(ratio=ours / plain)
    results["featurize"] = found


def section_linear(data, workers, work, repeats, results):
    print(f"\n(c) linear mode, {HEAD_EPOCHS} head epochs: the whole command vs one plain featurization pass, "
          f"{repeats} alternating runs; {load()}", flush=True)
    ours, plain_loop, plain_wall, parts = [], [], [], []
    for _ in range(repeats):
        wall, report = run_plain("featurize", data, workers, work)
        plain_wall.append(wall)
        plain_loop.append(report["seconds"])
        wall, events, history, started = run_job(data, work, "linear", HEAD_EPOCHS)
        ours.append(wall)
        parts.append(phases(events, started, started + wall))
    ratio = statistics.median(ours) / statistics.median(plain_loop)
    print(f"  plain featurization pass: loop {statistics.median(plain_loop):.1f} s "
          f"({', '.join(f'{s:.1f}' for s in plain_loop)}), whole script {statistics.median(plain_wall):.1f} s")
    print(f"  train.py --mode linear --epochs {HEAD_EPOCHS}: {statistics.median(ours):.1f} s "
          f"({', '.join(f'{s:.1f}' for s in ours)})")
    names = list(parts[0])
    print("  where the job's time goes (median s): " + ", ".join(
        f"{name} {statistics.median(p[name] for p in parts):.2f}" for name in names))
    print(f"  ratio to the plain loop {verdict('linear', ratio)}; to the whole plain script "
          f"{statistics.median(ours) / statistics.median(plain_wall):.2f}x")
    results["linear"] = {"ours": ours, "plain_loop": plain_loop, "plain_wall": plain_wall, "phases": parts,
                         "ratio": ratio}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--full-images", type=int, default=1000, help="the subset full mode trains on")
    parser.add_argument("--full-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=imagecache.available_cpus())
    parser.add_argument("--only", default="full,featurize,linear")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile for featurizing")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON at the end")
    # the child processes
    parser.add_argument("--plain", choices=("full", "featurize"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-featurize", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain_script(args.plain, args.data, args.workers, args.full_epochs, args.out)))
        return
    if args.measure_featurize:
        print(json.dumps(measure_featurize(Path(args.data), args.workers, args.repeats, Path(args.out), args.compile)))
        return

    only = set(args.only.split(","))
    results = {}
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        data = make_images(work / "images", args.images)
        print(f"{args.images} generated {SIZE}x{SIZE} JPEGs in {CLASSES} classes; ResNet50, --weights none, batch "
              f"{BATCH}, {args.workers} workers; a fresh --cache-dir for every run of the job; "
              f"{imagecache.available_cpus()} CPUs", flush=True)
        if "full" in only:
            section_full(subset(data, work / "subset", args.full_images), args.workers, work, args.full_epochs,
                         results)
        if "featurize" in only:
            section_featurize(data, args.workers, work, args.repeats, args.compile, results)
        if "linear" in only:
            section_linear(data, args.workers, work, args.repeats, results)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
