"""Where the training job runs: its processes (torchrun / Azure ML) and its arithmetic (precision).

Kept apart from train.py so that the loop there reads as the algorithm. Works on torch >= 1.13.
"""
import contextlib
import datetime
import os

import torch
import torch.distributed


class Dist:
    """This process's place in a (maybe) distributed run, and the few collectives used.

    Local rank 0 of each machine decodes the images for the processes there; every process
    trains its share of each epoch and evaluates its share of the validation and test splits;
    rank 0 alone checkpoints, exports and prints events, and every process takes its decision to
    go on or stop.
    """

    def __init__(self, world=1, rank=0, local_rank=0):
        self.world, self.rank, self.local_rank = world, rank, local_rank
        self.enabled = False
        self.device = torch.device("cpu")

    @classmethod
    def from_env(cls):
        env = os.environ
        return cls(int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self):
        return self.rank == 0

    def init(self, device):
        self.device = device
        # Local rank 0 decodes the dataset while the others wait: allow hours.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(hours=3))
        self.enabled = True

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, value):
        """Rank 0's number, on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(tensor, 0)
        return tensor.item()

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
        if self.enabled:
            torch.distributed.destroy_process_group()
            self.enabled = False


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
