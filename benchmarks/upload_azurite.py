"""Benchmark: dataset upload to a real Azurite, incremental vs. naive.

2,000 small generated JPEGs (a few KB each, 10 labels) are uploaded three ways, each into its own
container of the same Azurite:
  naive     one upload_blob per file, sequentially, no manifest, no dedup (the baseline of a
            hand-written upload loop)
  first     orchestrator.storage.blob.upload_dataset on an empty container, cold hash cache
  repeated  the same call again on the unchanged dataset (warm hash cache): nothing is sent
It prints files/s and MB/s for each and the ratios repeated/first and naive/first (time ratios:
below 1 is faster than the first upload).

Run: .venv/bin/python benchmarks/upload_azurite.py [--files 2000] [--workers 8]
Needs Azurite (scripts/setup_azurite.sh) unless AZURE_STORAGE_CONNECTION_STRING points at one.
"""
import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_images(root, count, labels=10, size=48, seed=0):
    """`count` noisy JPEGs of a few KB under root/<label>/, backdated an hour (an existing dataset)."""
    rng = np.random.default_rng(seed)
    past = time.time() - 3600
    for i in range(count):
        label = root / f"class{i % labels:02d}"
        label.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=80)
        path = label / f"img{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        os.utime(path, (past, past))
    return root


def naive_upload(root, container):
    container.create_container()
    for path in sorted(root.rglob("*.jpg")):
        container.upload_blob(f"naive/{path.relative_to(root).as_posix()}", path.read_bytes())


def measure(label, fn, files, nbytes):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    row = {"run": label, "seconds": round(seconds, 3), "files_per_s": round(files / seconds, 1),
           "mb_per_s": round(nbytes / 1e6 / seconds, 2)}
    if result is not None:
        row["files_sent"] = result.files_sent
    return row


def run(connection_string, work, files, workers):
    from orchestrator.storage.blob import connect, parse_uri, upload_dataset

    os.environ["XDG_STATE_HOME"] = str(work / "state")  # a cold hash cache for "first"
    root = make_images(work / "images", files)
    nbytes = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    env = {"AZURE_STORAGE_CONNECTION_STRING": connection_string}
    naive = connect(parse_uri("az://devstoreaccount1/bench-naive"), env)
    incremental = connect(parse_uri("az://devstoreaccount1/bench-incremental"), env)
    # Warm up the emulator and the connection pool so the first measured run is not penalised.
    upload_dataset(make_images(work / "warmup", 40), connect(parse_uri("az://devstoreaccount1/warmup"), env), "w")
    rows = [
        measure("first", lambda: upload_dataset(root, incremental, "ds", workers=workers), files, nbytes),
        measure("repeated", lambda: upload_dataset(root, incremental, "ds", workers=workers), files, nbytes),
        measure("naive", lambda: naive_upload(root, naive), files, nbytes),
    ]
    first = rows[0]["seconds"]
    for row in rows:
        row["time_ratio_vs_first"] = round(row["seconds"] / first, 3)
    return {"files": files, "mb": round(nbytes / 1e6, 2), "workers": workers, "runs": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            report = run(os.environ["AZURE_STORAGE_CONNECTION_STRING"], work, args.files, args.workers)
        else:
            from services.azurite import start_azurite

            (work / "azurite").mkdir()
            with start_azurite(work / "azurite") as azurite:
                report = run(azurite.connection_string, work, args.files, args.workers)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['files']} files, {report['mb']} MB, {report['workers']} workers, Azurite on 127.0.0.1")
    print(f"{'run':<9} {'sent':>5} {'seconds':>8} {'files/s':>8} {'MB/s':>6} {'time/first':>10}")
    for r in report["runs"]:
        print(f"{r['run']:<9} {r.get('files_sent', report['files']):>5} {r['seconds']:>8.2f} "
              f"{r['files_per_s']:>8.0f} {r['mb_per_s']:>6.2f} {r['time_ratio_vs_first']:>10.3f}")


if __name__ == "__main__":
    main()
