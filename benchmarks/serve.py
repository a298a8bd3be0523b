"""Benchmark: `orchestrate serve` under 8 concurrent clients on loopback, against in-process prediction.

The model is an untrained ResNet50 at 224 px (random weights: no download here; the arithmetic is
that of a trained one), exported by the job's own code with 10 labels, as benchmarks/score.py
does, and its int8 model (orchestrator.inference.quantize.quantize_model, calibrated on the
photos, gate off: speed only). The requests: `--photos` distinct generated 400x300 JPEGs
(photo-like gradients and grain), posted round-robin as multipart uploads to POST /predict,
`--requests` in all. Three ways, same run:
  served    the real command in a subprocess, `orchestrate serve MODEL`, and `--clients` threads
            (8 by default), each with its own httpx connection, posting one request after another;
            requests/s over the whole batch and the latency of each request (p50, p95); once
            with the fp32 model, once with the int8 one
  baseline  the same image bytes through the server's own code in this process, one at a time,
            fp32: Predictor.pixels (header check, imaging's decode), then OnnxClassifier's
            session on a batch of one and Predictor.ranked, no HTTP at all
All get warm-up requests before their clock starts. The build machine is shared, so they
alternate `--repeats` times and medians are reported, with the load average before and after.

`--model PATH` serves another model (e.g. a tiny one, where HTTP and parsing are the cost rather
than inference), `--workers N` passes `--workers` to the command, `--no-int8` skips the int8 model.

Run: .venv/bin/python benchmarks/serve.py [--requests 200] [--clients 8] [--repeats 3] [--workers 1]
     [--model PATH] [--no-int8] [--json]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tests/serving.py imports its neighbours by their plain names
sys.path.insert(0, str(REPO / "benchmarks"))

from score import export_model, make_photos  # noqa: E402  (the same model and photos as the score benchmark)
from serving import running_server  # noqa: E402  (the server process of tests/test_serve.py)


def p(values, q):
    return float(np.percentile(values, q))


def measure_served(url, photos, requests, clients):
    """requests/s with `clients` threads posting back to back, and every request's latency."""
    per_client = [photos[i::clients] or photos for i in range(clients)]
    counts = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(i):
        latencies = []
        with httpx.Client(timeout=120) as http:
            mine = per_client[i]
            http.post(f"{url}/predict", files={"file": ("warm.jpg", mine[0])}).raise_for_status()  # warm-up
            barrier.wait()
            for n in range(counts[i]):
                started = time.perf_counter()
                http.post(f"{url}/predict", files={"file": (f"{n}.jpg", mine[n % len(mine)])}).raise_for_status()
                latencies.append(time.perf_counter() - started)
        return latencies

    barrier = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        barrier.wait()
        started = time.perf_counter()
        latencies = [x for f in futures for x in f.result()]
        elapsed = time.perf_counter() - started
    return {"requests_per_second": len(latencies) / elapsed, "p50_ms": p(latencies, 50) * 1e3,
            "p95_ms": p(latencies, 95) * 1e3}


def predict_alone(predictor, name, data):
    """One image through the server's own decode and ranking, scored on its own (a batch of one)."""
    probs = predictor.classifier.probabilities(predictor.pixels(name, data)[np.newaxis])[0]
    return {"image": name, **predictor.ranked(probs, 5)}


def measure_baseline(predictor, photos, requests):
    """The same bytes through the server's prediction code, in this process, one at a time."""
    predict_alone(predictor, "warm.jpg", photos[0])
    latencies = []
    started = time.perf_counter()
    for n in range(requests):
        t = time.perf_counter()
        predict_alone(predictor, f"{n}.jpg", photos[n % len(photos)])
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    return {"requests_per_second": requests / elapsed, "p50_ms": p(latencies, 50) * 1e3,
            "p95_ms": p(latencies, 95) * 1e3}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--photos", type=int, default=32, help="distinct JPEGs posted round-robin")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="orchestrate serve --workers")
    parser.add_argument("--model", type=Path, help="serve this model instead of the untrained ResNet50")
    parser.add_argument("--no-int8", action="store_true", help="serve the fp32 model only")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    args = parser.parse_args()
    load_before = os.getloadavg()

    from orchestrator.inference.classifier import OnnxClassifier
    from orchestrator.inference.quantize import quantize_model
    from orchestrator.inference.serve import DEFAULT_MAX_PIXELS, Predictor

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model or tmp / "model.onnx"
        if not args.model:
            export_model(model)
        make_photos(tmp / "photos", args.photos, 400, 300, 2)
        photos = [path.read_bytes() for path in sorted((tmp / "photos").iterdir())]
        predictor = Predictor(OnnxClassifier(model, max_pixels=DEFAULT_MAX_PIXELS))
        served = {"served": model}
        if not args.no_int8:
            named = [(path.name, path.read_bytes()) for path in sorted((tmp / "photos").iterdir())]
            served["served int8"] = Path(quantize_model(model, named, named, [0] * len(named), out=tmp / "model.int8.onnx",
                                                        gate=False)["path"])
        print(f"{model if args.model else 'ResNet50 at 224 px'}; {args.workers} worker(s); {len(photos)} JPEGs of 400x300, {np.mean([len(b) for b in photos]) / 1e3:.0f} kB "
              f"each; {args.requests} requests per measurement; load average {load_before[0]:.2f}", flush=True)
        runs = {name: [] for name in ("baseline", *served)}
        with ExitStack() as servers:
            urls = {name: servers.enter_context(running_server(path, "--workers", args.workers, timeout=120,
                                                               log_path=tmp / f"{path.stem}.log"))
                    for name, path in served.items()}
            for repeat in range(args.repeats):
                runs["baseline"].append(measure_baseline(predictor, photos, args.requests))
                for name, url in urls.items():
                    runs[name].append(measure_served(url, photos, args.requests, args.clients))
                print(f"  repeat {repeat + 1}: " + "  ".join(
                    f"{name} {r[-1]['requests_per_second']:.1f} req/s (p95 {r[-1]['p95_ms']:.0f} ms)"
                    for name, r in runs.items()), flush=True)

    median = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    load_after = os.getloadavg()
    what = f"{args.model.name if args.model else 'ResNet50 at 224 px'}, 400x300 JPEG"
    print(f"\n{'POST /predict, ' + what:<58}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}")
    titles = {"baseline": "baseline: in-process fp32, one at a time",
              "served": f"served fp32: {args.clients} HTTP clients, {args.workers} worker(s)",
              "served int8": f"served int8: {args.clients} HTTP clients, {args.workers} worker(s)"}
    for name in runs:
        m = median[name]
        print(f"{titles[name]:<58}{m['requests_per_second']:>8.1f}{m['p50_ms']:>9.0f}{m['p95_ms']:>9.0f}")
    ratio = {name: median[name]["requests_per_second"] / median["baseline"]["requests_per_second"] for name in served}
    print("; ".join(f"{name} / baseline throughput: {r:.2f}x" for name, r in ratio.items())
          + f"; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    if args.json:
        print(json.dumps({"median": median, "over_baseline": ratio,
                          "load_average": [load_before[0], load_after[0]], "runs": runs}))


if __name__ == "__main__":
    main()
