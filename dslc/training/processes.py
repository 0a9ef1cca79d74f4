"""A run's device and processes: torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), the process group, the
modules the step calls (DistributedDataParallel, torch.compile), and mixed precision."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dslc.errors import error


class Processes:
    """This process's place among the run's processes, its device and its autocast type."""

    def __init__(self, device: str, amp: bool, steps: int, env: Mapping[str, str] = os.environ):
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.main = self.rank == 0  # rank 0 alone writes the run folder and prints
        self.device = pick_device(device, int(env.get("LOCAL_RANK", "0")))
        if self.world > 1:
            if steps > 1:
                raise error(
                    None, "several processes (--nproc / torchrun) support one training step; this spec alternates steps"
                )
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.amp_dtype = amp_dtype(self.device) if amp else None

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed only for float16 autocast; otherwise a pass-through."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def wrap(self, models: dict[str, nn.Module], trained: list[str], compile: bool) -> dict[str, nn.Module]:
        """The modules the training step calls: DDP across processes, torch.compile on request."""
        wrapped = dict(models)
        for name in trained:
            module = models[name]
            if self.world > 1:
                from torch.nn.parallel import DistributedDataParallel

                module = DistributedDataParallel(
                    module, device_ids=[self.device.index] if self.device.type == "cuda" else None
                )
            if compile:
                module = torch.compile(module)
            wrapped[name] = module
        return wrapped

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of `values` over the processes (each process's own values when it runs alone)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values)
        return values / self.world

    def barrier(self) -> None:
        """Wait for every process (rank 0 writes while the others wait)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """The end of the run: wait for every process, then leave the process group."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def pick_device(choice: str, local_rank: int) -> torch.device:
    """`auto`: this process's GPU when there is one, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise error(None, "--device cuda: no CUDA device is available", "pass --device cpu, or --device auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CPUs and on GPUs that have it; float16 (with loss scaling) on older GPUs."""
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
