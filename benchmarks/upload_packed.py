"""Benchmark: packed, content-addressed upload against `az storage blob upload-batch`, on Azurite.

27,000 generated JPEGs of ~3 KB in 10 label folders (EuroSAT's shape) are uploaded, each way into
its own container of one Azurite (started here with its debug log, which counts the requests):
  az          `az storage blob upload-batch` of the folder (Debian's azure-cli, installed with
              apt-get when missing); the baseline. Without it: the loose upload
              (`orchestrate data upload --no-pack`), labeled as such.
  packed      `orchestrate data upload DATA` with a cold hash cache and nothing packed yet: scan,
              hash, pack, send the shards and the index
  unchanged   the same command again: bytes sent, listing requests, whole-command wall time
  one changed the same command after one image is rewritten: bytes and shards sent
  reading     the requests a job's reading of the dataset costs, counted in the same log: the
              packed prefix read as an Azure ML `download` input reads it (one listing, then
              each blob, with azure-storage-blob's defaults) against the loose files read one
              by one as a mounted folder is (a sample of READ_SAMPLE files: a request each)
Every run is the whole command in a subprocess, as a user types it. It prints the ratio
az / packed (target 30x), and checks the unchanged run's 0 bytes, 1 listing, <= 1.5 s target,
and that one changed image sends at most one shard.

Run: .venv/bin/python benchmarks/upload_packed.py [--files 27000] [--json]
Needs Azurite (scripts/setup_azurite.sh).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
ORCHESTRATE = str(Path(sys.executable).with_name("orchestrate"))
ACCOUNT = "devstoreaccount1"
READ_SAMPLE = 1000


def ensure_az():
    """The az executable, installed from Debian's azure-cli package when missing; (path, why not)."""
    if shutil.which("az"):
        return shutil.which("az"), None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "az is missing and apt-get cannot run here (not root, or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "azure-cli"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"`{' '.join(command)}` failed: {done.stderr.strip().splitlines()[-1:]}"
    return shutil.which("az"), None


class AzuriteWithLog:
    """azurite-blob with its debug log: requests are counted from it (what reached the server)."""

    def __init__(self, folder):
        from services.azurite import ACCOUNT_KEY, azurite_command, free_port

        self.folder, self.port, self.log = folder, free_port(), folder / "debug.log"
        command = azurite_command()
        if command is None:
            raise SystemExit("azurite-blob not found: run scripts/setup_azurite.sh")
        self.proc = subprocess.Popen([command, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                                      str(folder), "--skipApiVersionCheck", "--loose", "--disableTelemetry",
                                      "--debug", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.connection_string = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                                  f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};")

    def __enter__(self):
        from services.azurite import _wait_for_port

        _wait_for_port(self.port, self.proc, 30, str(self.log))
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)

    def mark(self):
        return self.log.stat().st_size if self.log.exists() else 0

    def requests_since(self, mark):
        """(all requests, listing requests) that Azurite logged after `mark`."""
        time.sleep(0.3)  # the log is written asynchronously
        with open(self.log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        incoming = re.findall(r"Incoming request[^\n]*", text)
        urls = [line for line in text.splitlines() if "RequestURL=" in line or "Request URL" in line]
        lines = incoming or urls
        return len(lines), sum(1 for line in lines if "comp=list" in line)


def read_requests(azurite, container, prefix, limit=None):
    """(blobs read, requests Azurite logged) for reading every blob under `prefix` of `container`
    (the first `limit` of them), each blob whole, after one listing."""
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(azurite.connection_string, container)
    mark = azurite.mark()
    names = [blob.name for blob in client.list_blobs(name_starts_with=prefix)][:limit]
    for name in names:
        client.download_blob(name).readall()
    return len(names), azurite.requests_since(mark)[0]


def run_command(args, env):
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])}... failed ({done.returncode}): {done.stderr[-1500:]}")
    return seconds, done.stdout


def run(work, files):
    from upload_azurite import make_images

    root = make_images(work / "EuroSAT-like", files, size=58)  # ~3 KB each, as EuroSAT's JPEGs
    images = sorted(root.rglob("*.jpg"))
    nbytes = sum(p.stat().st_size for p in images)
    env = {**os.environ, "XDG_STATE_HOME": str(work / "state"), "XDG_CACHE_HOME": str(work / "cache")}
    report = {"files": len(images), "mb": round(nbytes / 1e6, 2), "mean_kb": round(nbytes / len(images) / 1e3, 2),
              "load_average_before": os.getloadavg()}
    (work / "azurite").mkdir()
    with AzuriteWithLog(work / "azurite") as azurite:
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        # warm-up: the emulator's first requests are slow
        run_command([ORCHESTRATE, "data", "upload", str(make_images(work / "warmup", 50)), "--to",
                     f"az://{ACCOUNT}/warmup", "--json"], env)
        target = f"az://{ACCOUNT}/packed/eurosat"

        mark = azurite.mark()
        seconds, out = run_command([ORCHESTRATE, "data", "upload", str(root), "--to", target, "--json"], env)
        first = json.loads(out)
        requests, listings = azurite.requests_since(mark)
        report["packed"] = {"seconds": round(seconds, 2), "shards": first["shards_sent"],
                            "mb_sent": round(first["bytes_sent"] / 1e6, 2), "requests": requests,
                            "files_per_s": round(len(images) / seconds)}

        mark = azurite.mark()
        seconds, out = run_command([ORCHESTRATE, "data", "upload", str(root), "--to", target, "--json"], env)
        again = json.loads(out)
        requests, listings = azurite.requests_since(mark)
        report["unchanged"] = {"seconds": round(seconds, 2), "bytes_sent": again["bytes_sent"],
                               "index_sent": again["index_sent"], "requests": requests, "listings": listings}

        from PIL import Image
        changed = images[len(images) // 2]
        Image.new("RGB", (48, 48), (250, 10, 10)).save(changed, "JPEG", quality=80)
        mark = azurite.mark()
        seconds, out = run_command([ORCHESTRATE, "data", "upload", str(root), "--to", target, "--json"], env)
        one = json.loads(out)
        requests, listings = azurite.requests_since(mark)
        index = json.loads((Path(one["pack"]["out_dir"]) / "index.json").read_text())
        report["one_changed"] = {"seconds": round(seconds, 2), "bytes_sent": one["bytes_sent"],
                                 "shards_sent": one["shards_sent"], "largest_shard": max(s["size"] for s in index["shards"]),
                                 "requests": requests}

        blobs, requests = read_requests(azurite, "packed", "eurosat/")
        report["reading_packed"] = {"blobs": blobs, "requests": requests, "images": len(images)}

        az, why = ensure_az()
        if az:
            az_env = {**env, "AZURE_CORE_COLLECT_TELEMETRY": "no", "AZURE_CONFIG_DIR": str(work / "az")}
            run_command([az, "storage", "container", "create", "-n", "bench-az", "--connection-string",
                         azurite.connection_string, "-o", "none"], az_env)
            mark = azurite.mark()
            seconds, _ = run_command([az, "storage", "blob", "upload-batch", "-d", "bench-az", "-s", str(root),
                                      "--connection-string", azurite.connection_string, "-o", "none"], az_env)
            requests, _ = azurite.requests_since(mark)
            report["baseline"] = {"name": "az storage blob upload-batch", "seconds": round(seconds, 2),
                                  "requests": requests, "files_per_s": round(len(images) / seconds)}
            loose = ("bench-az", "")
        else:
            (work / "state2").mkdir()
            seconds, _ = run_command([ORCHESTRATE, "data", "upload", str(root), "--no-pack", "--to",
                                      f"az://{ACCOUNT}/loose/eurosat", "--json"], {**env, "XDG_STATE_HOME": str(work / "state2")})
            report["baseline"] = {"name": f"orchestrate data upload --no-pack (az unavailable: {why})",
                                  "seconds": round(seconds, 2), "files_per_s": round(len(images) / seconds)}
            loose = ("loose", "eurosat/")
        blobs, requests = read_requests(azurite, *loose, limit=READ_SAMPLE)
        report["reading_loose"] = {"blobs": blobs, "requests": requests,
                                   "requests_per_epoch": round(requests / blobs * len(images))}
    report["ratio_baseline_over_packed"] = round(report["baseline"]["seconds"] / report["packed"]["seconds"], 1)
    report["load_average_after"] = os.getloadavg()
    report["targets"] = {
        "30x_faster_than_az": report["ratio_baseline_over_packed"] >= 30,
        "unchanged_sends_0_bytes": report["unchanged"]["bytes_sent"] == 0,
        "unchanged_one_listing": report["unchanged"]["listings"] == 1,
        "unchanged_at_most_1.5_s": report["unchanged"]["seconds"] <= 1.5,
        "one_changed_at_most_one_shard": report["one_changed"]["bytes_sent"] <= report["one_changed"]["largest_shard"],
        "reading_requests_are_shards_not_files": report["reading_packed"]["requests"] <= report["reading_packed"]["blobs"] + 1,
    }
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=27000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(Path(tmp), args.files)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    base, packed = report["baseline"], report["packed"]
    print(f"{report['files']} JPEGs, {report['mb']} MB (mean {report['mean_kb']} KB), Azurite on 127.0.0.1, "
          f"load average {report['load_average_before'][0]:.2f} -> {report['load_average_after'][0]:.2f}")
    print(f"baseline  {base['name']}: {base['seconds']:.1f} s ({base['files_per_s']} files/s)")
    print(f"packed    orchestrate data upload: {packed['seconds']:.1f} s, {packed['shards']} shards, "
          f"{packed['requests']} requests -> {report['ratio_baseline_over_packed']}x faster than the baseline")
    u = report["unchanged"]
    print(f"unchanged {u['seconds']:.2f} s, {u['bytes_sent']} bytes sent, {u['listings']} listing(s), "
          f"{u['requests']} request(s)")
    o = report["one_changed"]
    print(f"1 changed {o['seconds']:.2f} s, {o['bytes_sent']} bytes in {o['shards_sent']} shard(s) "
          f"(largest shard {o['largest_shard']} bytes)")
    r, loose = report["reading_packed"], report["reading_loose"]
    print(f"reading   packed: {r['requests']} requests for {r['images']} images ({r['blobs']} blobs: the index and "
          f"the shards, after 1 listing); loose: {loose['requests']} requests for {loose['blobs']} files, "
          f"{loose['requests_per_epoch']} for all of them")
    for name, met in report["targets"].items():
        print(f"  target {name}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
