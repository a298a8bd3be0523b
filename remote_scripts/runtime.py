"""Where the training job runs: its processes (torchrun / Azure ML) and its arithmetic (AMP).

Kept apart from train.py so that the loop there reads as the algorithm. Works on torch >= 1.13.
"""
import datetime
import os

import torch
import torch.distributed


class Dist:
    """This process's place in a (maybe) distributed run, and the few collectives used.

    Local rank 0 of each machine decodes the images for the processes there; rank 0 alone
    validates, checkpoints, evaluates, exports and prints events. Every process trains its share
    of each epoch and takes rank 0's decision to go on or stop.
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
        # Local rank 0 decodes the dataset and rank 0 evaluates while the others wait: allow hours.
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

    def close(self):
        if self.enabled:
            torch.distributed.destroy_process_group()
            self.enabled = False


class Precision:
    """Autocast on CUDA: bfloat16 where supported, else float16 with a GradScaler; off on CPU."""

    def __init__(self, device, enabled):
        self.device_type = device.type
        self.enabled = enabled and device.type == "cuda"
        self.dtype = None
        self.scaler = None
        if self.enabled:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:
                amp = torch.amp if hasattr(torch.amp, "GradScaler") else None  # torch >= 2.3
                self.scaler = amp.GradScaler("cuda") if amp else torch.cuda.amp.GradScaler()

    def autocast(self, enabled=True):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype,
                              enabled=self.enabled and enabled)

    def describe(self):
        return str(self.dtype).replace("torch.", "") if self.enabled else "float32"

    def step(self, loss, optimizer):
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
