"""Where the training job runs: its device and threads, its processes (torchrun / Azure ML) and its
arithmetic (precision).

Kept apart from train.py so that the loop there reads as the algorithm. Works on torch >= 1.13.
"""
import contextlib
import datetime
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.distributed

from .imagecache import available_cpus

# The longest a collective (a training step's all-reduce, a gather, a broadcast) waits for the other
# ranks. They arrive within seconds of each other -- the slowest is a step behind rank 0 writing a
# checkpoint (hundreds of MB, maybe to a mounted disk) -- so minutes, not hours: this is how soon a
# rank that died without a word (an OOM kill, no torchrun agent to notice) ends the others' wait.
# The waits that can be long (local rank 0 downloading weights or decoding, rank 0 exporting) are
# Dist.barrier, which has no timeout.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
STORE_TIMEOUT = datetime.timedelta(minutes=1)  # connecting to the job's store, one request to it
BOARD_PREFIX = "orchestrate/"
WATCH_SECONDS = 1.0   # how often the watcher thread reads the board
# How long the main thread has to end the run itself once a failure is known (its cleanup may wait
# for a checkpoint write in flight); torchrun's agent kills a worker 30 s after its SIGTERM.
GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Failure:
    """What ended a rank: the exit code and one-line message it ends with. `rank` is None in a
    single process, where the message needs no rank to be understood."""
    rank: Optional[int]
    code: int
    message: str

    @property
    def error(self):
        """The run_end event's error: which rank failed, and why."""
        return self.message if self.rank is None else f"rank {self.rank}: {self.message}"


class PeerFailed(Exception):
    """Another rank failed: this one stops too, with that rank's exit code and message."""

    def __init__(self, failure):
        super().__init__(failure.error)
        self.failure = failure


class Board:
    """The job's notice board: a few keys in the TCPStore that every rank of a torch.distributed job
    already shares (MASTER_ADDR:MASTER_PORT, served by torchrun's agent, else by rank 0).

    Why a store and not a collective: any rank can post to it at any moment and read it without
    the others taking part, so a rank that fails tells the others even while they are busy in
    other work or blocked in a collective, and a barrier on it can wait for hours with no timeout.
    Only the operations torch 1.13's store has: set-if-absent (compare_set) and counters (add).
    """

    def __init__(self):
        self.store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                                None, False, STORE_TIMEOUT)

    def post_failure(self, failure):
        """Record `failure` unless a rank has already recorded one; the first failure recorded."""
        first = self.store.compare_set(BOARD_PREFIX + "failure", "", json.dumps(asdict(failure)))
        self.store.add(BOARD_PREFIX + "failures", 1)  # after the record, so that readers find it
        return Failure(**json.loads(first))

    def failure(self):
        """The first failure any rank has recorded, or None."""
        if not self.count("failures"):
            return None
        return Failure(**json.loads(self.store.get(BOARD_PREFIX + "failure")))

    def arrive(self, key):
        self.store.add(BOARD_PREFIX + key, 1)

    def count(self, key):
        return int(self.store.add(BOARD_PREFIX + key, 0))


class Dist:
    """This process's place in a (maybe) distributed run, the few collectives used, and how the
    ranks learn that one of them failed.

    Local rank 0 of each machine decodes the images for the processes there; every process
    trains its share of each epoch and evaluates its share of the validation and test splits;
    rank 0 alone checkpoints, exports and prints events, and every process takes its decision to
    go on or stop.

    Any failure on any rank ends every rank within seconds, with the first failing rank's message
    and exit code: the failing rank posts it to the Board (fail) before it exits; the others
    find it at the next barrier (PeerFailed), or see their collective fail as the failing rank's
    connections close (gloo) and read the board then (failure), or are stopped by torchrun's
    agent with SIGTERM and read it then; and a watcher thread ends, GRACE_SECONDS after a failure
    is posted, a rank that none of these reached (blocked in an NCCL collective that only the
    timeout would end, or busy in long work of its own without torchrun's agent).
    """

    def __init__(self, world=1, rank=0, local_rank=0):
        self.world, self.rank, self.local_rank = world, rank, local_rank
        self.on_failure = None  # see watch()
        self.watcher = None
        self.enabled = False
        self.device = torch.device("cpu")
        self.board = None
        self.barriers = 0
        self.closed = threading.Event()

    @classmethod
    def from_env(cls):
        """From the variables torchrun and Azure ML set. Under torchrun's agent, which serves the
        store before it starts the workers, the board is connected at once, so that even a failure
        before the process group exists (bad arguments, no GPU for this rank) reaches rank 0."""
        env = os.environ
        dist = cls(int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)))
        if dist.world > 1 and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            dist.board = Board()
        return dist

    @property
    def main(self):
        return self.rank == 0

    def init(self, device):
        self.device = device
        if device.type == "cuda" and torch.__version__.startswith("1."):
            # Without it torch 1.13's NCCL collectives never time out (torch 2 and torchrun's agent set it).
            os.environ.setdefault("NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=COLLECTIVE_TIMEOUT)
        if self.board is None:  # rank 0 serves the store: it exists from now on
            self.board = Board()
        self.enabled = True
        self._start_watcher()

    def watch(self, on_failure):
        """Once any rank has posted a failure, end this process with on_failure(failure) (which
        must not return) unless it has ended by itself within GRACE_SECONDS.

        This is for the process that nothing else reaches: one blocked in C++ -- an NCCL
        collective, or creating the process group while a rank fails at start -- where Python
        runs no signal handler, not even for torchrun's SIGTERM, or one busy in long work of
        its own without torchrun's agent to stop it. A thread of its own, with its own connection to
        the store: the main thread's may be mid-request. It starts once the board is connected.
        """
        self.on_failure = on_failure
        self._start_watcher()

    def _start_watcher(self):
        if self.on_failure and self.board is not None and self.watcher is None and self.world > 1:
            self.watcher = threading.Thread(target=self._watch, name="failure-watcher", daemon=True)
            self.watcher.start()

    def barrier(self):
        """Wait until every rank gets here; raise PeerFailed as soon as a rank has failed instead.

        Not a collective, so it may wait for hours (local rank 0 downloading the weights or decoding
        the images, rank 0 exporting) with no timeout to outlast. Rank 0 leaves last: it may serve
        the store, which must outlive every rank's last request.
        """
        if not self.enabled:
            return
        self.barriers += 1
        name = f"barrier/{self.barriers}"
        self.board.arrive(name + "/in")
        self._wait_for_all(name + "/in")
        self.board.arrive(name + "/out")
        if self.main:
            self._wait_for_all(name + "/out")

    def _wait_for_all(self, key):
        pause = 0.005
        while self.board.count(key) < self.world:
            failure = self.board.failure()
            if failure is not None:
                raise PeerFailed(failure)
            time.sleep(pause)
            pause = min(2 * pause, 0.2)

    def fail(self, code, message):
        """Post this rank's failure for the others; the failure the run ends with: the first posted,
        or this rank's own when every rank failed alike (bad arguments, a diverged loss) or the
        board does not answer (rank 0 served the store and has ended)."""
        own = Failure(self.rank if self.world > 1 else None, code, message)
        if self.board is None or self.world == 1:
            return own
        try:
            first = self.board.post_failure(own)
        except Exception:
            return own
        return own if first.message == own.message else first

    def failure(self):
        """The first failure a rank has posted, or None (also when the board does not answer)."""
        if self.board is None or self.world == 1:
            return None
        try:
            return self.board.failure()
        except Exception:
            return None

    def _watch(self):
        try:
            board = Board()
            while not self.closed.wait(WATCH_SECONDS):
                failure = board.failure()
                if failure is not None:
                    if not self.closed.wait(GRACE_SECONDS):
                        self.on_failure(failure)
                    return
        except Exception:  # the store has gone
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                # torchrun's agent served it, and has died (killed): its workers must not train on
                # as orphans, since torch 2 starts them in sessions of their own, out of its reach.
                os._exit(1)
            return  # rank 0 served it and has ended: nothing left to watch

    def broadcast(self, value):
        """Rank 0's number, on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(tensor, 0)
        return tensor.item()

    def share(self, tensors):
        """Copy rank 0's values into `tensors` (a module's parameters and buffers) on every rank."""
        if not self.enabled:
            return
        for tensor in tensors:
            if tensor.is_contiguous():
                torch.distributed.broadcast(tensor, 0)
            else:  # channels_last weights: torch 1.13 broadcasts contiguous tensors only
                buffer = tensor.contiguous()
                torch.distributed.broadcast(buffer, 0)
                tensor.copy_(buffer)

    def all_sum(self, tensor):
        if self.enabled:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather(self, obj):
        """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def close(self):
        """Leave the process group, then stop the watcher: a destroy that hangs (NCCL after a
        failure) is still ended by the watcher."""
        if self.enabled:
            torch.distributed.destroy_process_group()
            self.enabled = False
        self.closed.set()


def native_bf16_cpu():
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), from /proc/cpuinfo.

    Without it, bf16 on a CPU is emulated and slower than fp32 (DESIGN.md 6: the build machines'
    EPYC has neither), so `auto` keeps fp32 there.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class DeviceError(ValueError):
    """--device names a device this process cannot use: the job exits 2."""


def resolve_device(name, dist):
    """The torch.device of --device `name` for this process: under several processes per machine,
    `cuda` is the GPU of the process's local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"--device {name}: {exc}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available here (use --device cpu)")
        if device.index is None:
            count = torch.cuda.device_count()
            if dist.local_rank >= count:
                raise DeviceError(f"process {dist.local_rank} of this machine has no GPU of its own ({count} "
                                 "visible): start at most one process per GPU, or use --device cpu")
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DeviceError(f"--device {name}: use auto, cpu, cuda or cuda:N")
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
    return max(1, available_cpus() // processes)


def describe_device(device):
    """The device as the run_start event and the log name it."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class PrecisionError(ValueError):
    """--precision asks for arithmetic this device cannot do natively: the job exits 2."""


class Precision:
    """The arithmetic of the forward and backward passes: autocast dtype and loss scaling.

    Why not `torch.cuda.is_bf16_supported()`: recent torch answers True on a T4 (compute
    capability 7.5), where bf16 is emulated and ResNet convolutions have no native cuDNN kernels;
    bf16 is native from Ampere (8.0) on. Older GPUs get fp16 with a GradScaler, which keeps small
    gradients from flushing to zero.
    """

    DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

    def __init__(self, device, choice="auto"):
        self.device_type = device.type
        name = choice
        if device.type == "cuda":
            capability = torch.cuda.get_device_capability(device)
            if choice == "auto":
                name = "bf16" if capability >= (8, 0) else "fp16"
            elif choice == "bf16" and capability < (8, 0):
                raise PrecisionError(
                    f"--precision bf16: {torch.cuda.get_device_name(device)} (compute capability "
                    f"{capability[0]}.{capability[1]}) has no native bfloat16; use --precision fp16 or auto")
        else:
            if choice == "auto":
                name = "bf16" if native_bf16_cpu() else "fp32"
            elif choice == "fp16":
                raise PrecisionError("--precision fp16 needs a CUDA GPU; on a CPU use fp32 or bf16")
        self.name = name
        self.dtype = self.DTYPES.get(name)
        self.scaler = None
        if name == "fp16":
            amp = torch.amp if hasattr(torch.amp, "GradScaler") else None  # torch >= 2.3
            self.scaler = amp.GradScaler("cuda") if amp else torch.cuda.amp.GradScaler()

    @property
    def reduced(self):
        """Whether autocast runs in a 16-bit dtype."""
        return self.dtype is not None

    def autocast(self, enabled=True):
        """The autocast context of the forward pass; `enabled=False` computes in fp32.

        fp32 gets no autocast object at all: torch 1.13 warns about an fp32 CPU autocast even
        when it is disabled.
        """
        if not (self.reduced and enabled):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def describe(self):
        return self.name

    def step(self, loss, optimizer):
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
