#!/usr/bin/env python3
"""Starts the training job: train.py in this process, or in N processes under torch's elastic agent.

    python remote_scripts/launch.py [--nproc N] [--gpus all|none|N] [--entry search] -- JOB_ARGS...

The local and Docker backends start every job here (orchestrator/backends/base.py:
launch_command); Azure ML starts train.py through its own PyTorch distribution. N processes start
when `--nproc N` asks for them (on CPUs too: gloo), else one per GPU when more than one is visible
(`--gpus N`: the first N of them; `none` hides them all). One process is train.py itself, exec'd
in place: nothing stands between it and the backend's signals.

Why the choice is made here, inside the job: only the job can count its GPUs. The client has no
torch, and `docker run --gpus all` hands the container GPUs that the client never sees.

Why torch's launcher API rather than `python -m torch.distributed.run --standalone`: on Python
3.11 (Debian bookworm, the offline image) torch 1.13's torchrun cannot parse its own default
--redirects/--tee (iterating an enum.Flag no longer yields its zero member) and stops with an
AttributeError; and 1.13's --standalone rendezvous gives the workers the machine's host name as
MASTER_ADDR, which a container without network cannot resolve. So this runs what `torchrun
--nproc_per_node N --master_addr 127.0.0.1 --master_port PORT` runs -- a static rendezvous, the
agent serving the job's store on that port -- and every worker gets the variables Azure ML's
PyTorch distribution sets too: WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. When a
worker fails, the agent stops the others (SIGTERM, SIGKILL 30 s later); the exit code is the first
failing worker's (torchrun exits 1 for any), or 128 + N when signal N stopped the job.
"""
import argparse
import glob
import os
import socket
import sys
import uuid

if not (__spec__ and __spec__.parent):  # started as a file: this folder becomes the package remote_scripts
    import job_package  # noqa: F401
from remote_scripts import progress

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
# `--entry search`: search.py, which runs its trials one after another in one process.
SEARCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "search.py")
MONITOR_SECONDS = 0.5  # how often the agent checks its workers: how soon a dead one stops the rest


class LaunchError(Exception):
    """Bad launch options: exit 2 with a run_end event, as train.py does for bad arguments."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise LaunchError(message)


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return int(text)


def gpus_option(text):
    text = text.lower()
    if text not in ("all", "auto", "none") and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"must be all, none or a positive count, not {text!r}")
    return "all" if text == "auto" else text  # auto: the docker backend's spelling of all


def parse_args(argv):
    """(options, train.py's arguments): the launcher's own options come before `--`."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = ArgumentParser(prog="launch.py", description="Start train.py in one process or several.")
    parser.add_argument("--nproc", type=positive_int,
                        help="training processes on this machine [default: one per visible GPU, at least one]")
    parser.add_argument("--gpus", type=gpus_option, default="all",
                        help="all, none or N: the visible GPUs the job may use (N: the first N)")
    parser.add_argument("--entry", choices=("train", "search"), default="train",
                        help="train: train.py; search: search.py's trials, in one process")
    return parser.parse_args(argv[:split]), argv[split + 1:]


def visible_gpus():
    """The GPUs this process can use (CUDA_VISIBLE_DEVICES applied).

    Without an NVIDIA device node (/dev/nvidiaN, or /dev/dxg under WSL) there are none, found
    without importing torch, which would cost every CPU run a second.
    """
    if not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg"):
        return 0
    import torch

    return torch.cuda.device_count()


def select_gpus(choice):
    """Apply --gpus to CUDA_VISIBLE_DEVICES; the number of GPUs the job gets."""
    if choice == "none":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return 0
    visible = visible_gpus()
    if choice == "all":
        return visible
    wanted = int(choice)
    if wanted > visible:
        raise LaunchError(f"--gpus {wanted}: only {visible} GPU(s) visible here")
    ids = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ids.split(",") if ids else [str(i) for i in range(visible)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:wanted])
    return wanted


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(nproc, train_args):
    """Run train.py in `nproc` processes under torch's elastic agent; the job's exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{free_port()}",
                          rdzv_configs={"rank": 0}, max_restarts=0, monitor_interval=MONITOR_SECONDS)
    try:
        elastic_launch(config, sys.executable)("-u", TRAIN, *train_args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -N: killed by signal N
    except SignalException as exc:  # the agent has stopped the workers
        return 128 + int(exc.sigval)
    return 0


def main(argv):
    try:
        options, train_args = parse_args(argv)
        gpus = select_gpus(options.gpus)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        progress.emit("run_end", status="failed", seconds=0.0, exit_code=2, error=str(exc))
        return 2
    if options.entry == "search":
        os.execv(sys.executable, [sys.executable, "-u", SEARCH, *train_args])
    nproc = options.nproc or max(1, gpus)
    if nproc == 1:
        os.execv(sys.executable, [sys.executable, "-u", TRAIN, *train_args])
    return run_workers(nproc, train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
