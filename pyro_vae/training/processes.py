"""The processes a training run spans: one (:class:`SingleProcess`) or those ``torchrun`` started
(:class:`TorchrunProcesses`). Both have the same methods, so the training loop never asks which it has.

Data-parallel training: launch one process per device with ``torchrun``; each process holds a full copy of
the model, draws its own share of every epoch's permutation, and the gradients are averaged with one
all-reduce per step before the (identical) optimizer steps, so every process keeps identical weights::

    torchrun --nproc_per_node=2 -m pyro_vae.cli train --distributed --epochs 50

The backend is NCCL when each process has a GPU and gloo on CPU. Only rank 0 writes files.
"""

import os

import torch
import torch.distributed as dist

from ..errors import ConfigError


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when present, else CPU; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` as they are.

    :raises ConfigError: CUDA requested on a machine without a GPU (or a GPU index it lacks), or a device this
        package does not train on (``meta``, ``mps``, unknown strings).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r:.40}; use auto, cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device.type!r} is not supported for training; use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but no GPU is available; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"GPU {device.index} was requested but this machine has {torch.cuda.device_count()}; "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


class SingleProcess:
    """One process on one device: every collective operation is the identity.

    :param device: ``"auto"``, ``"cpu"``, ``"cuda"``... (see :func:`resolve_device`).
    """

    rank = 0
    world_size = 1
    #: the process that writes files
    is_main = True
    #: ``(rank, world_size)`` for :meth:`~pyro_vae.data.ImageDataset.batches`, or ``None`` for all of it
    shard = None

    def __init__(self, device="auto"):
        self.device = resolve_device(device)

    def broadcast_module(self, module):
        """Give every process the parameters and buffers of rank 0 (nothing to do here)."""

    def average_gradients(self, parameters):
        """Average the gradients over the processes (nothing to do here)."""

    def all_sum(self, tensor):
        """The sum of ``tensor`` over the processes."""
        return tensor

    def share(self, obj):
        """Rank 0's Python object ``obj``, on every process."""
        return obj

    def gather(self, obj):
        """The Python objects ``obj`` of every process, in rank order."""
        return [obj]

    def barrier(self):
        """Wait until every process arrives."""

    def close(self):
        """Leave the process group, if any."""


class TorchrunProcesses(SingleProcess):
    """The processes ``torchrun`` started, joined into one process group (gloo on CPU, NCCL on GPUs).

    :param device: the user's device choice; under NCCL each process takes its own GPU (``LOCAL_RANK``).
    :raises ConfigError: outside ``torchrun``, or without ``torch.distributed``.
    """

    def __init__(self, device="auto"):
        if not dist.is_available():
            raise ConfigError("this PyTorch build has no torch.distributed; train without --distributed")
        if not dist.is_initialized():
            if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
                raise ConfigError("distributed training needs the torchrun environment; launch with "
                                  "torchrun --nproc_per_node=N -m pyro_vae.cli train --distributed ...")
            use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
            dist.init_process_group("nccl" if use_cuda else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.shard = (self.rank, self.world_size)
        if dist.get_backend() == "nccl":
            local = int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count()))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device("cpu" if str(device) == "auto" else device)

    def broadcast_module(self, module):
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)

    def average_gradients(self, parameters):
        # one all-reduce for all gradients instead of one per tensor: over one flat copy of them all
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, averaged in zip(grads, flat.split([grad.numel() for grad in grads])):
            grad.copy_(averaged.view_as(grad))

    def all_sum(self, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def share(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def gather(self, obj):
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def barrier(self):
        dist.barrier()

    def close(self):
        shutdown()


def processes(distributed=False, device="auto"):
    """The processes of a run: :class:`TorchrunProcesses` if ``distributed``, else :class:`SingleProcess`."""
    return TorchrunProcesses(device) if distributed else SingleProcess(device)


def shutdown():
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main():
    """True outside distributed training and on rank 0 inside it: the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
