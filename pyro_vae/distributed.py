"""Data-parallel training on ``torch.distributed``: the plumbing ``fit(..., distributed=True)`` uses.

Launch one process per device with ``torchrun``; each process holds a full copy of the model, draws its
own share of every epoch's permutation, and the gradients are averaged with one all-reduce per step
before the (identical) optimizer steps, so every process keeps identical weights::

    torchrun --nproc_per_node=2 -m pyro_vae.cli train --distributed --epochs 50

The backend is NCCL when each process has a GPU and gloo on CPU. Only rank 0 writes files.
"""

import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import ConfigError


def init(device):
    """Join the process group that ``torchrun`` describes in the environment.

    :param device: the user's device choice (``"auto"``, ``"cpu"``, ``"cuda"``...).
    :returns: ``(rank, world_size, device)``, the device being this process's own GPU under NCCL.
    """
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; train without --distributed")
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            raise ConfigError("distributed training needs the torchrun environment; launch with "
                              "torchrun --nproc_per_node=N -m pyro_vae.cli train --distributed ...")
        use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif str(device) == "auto":
        device = torch.device("cpu")
    return rank, world, torch.device(device)


def broadcast_module(module, src=0):
    """Copy parameters and buffers of rank ``src`` to every process (same start everywhere)."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src)


def average_gradients(parameters, world_size):
    """Replace every gradient by its mean over the processes, with one all-reduce for all of them."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def all_sum(tensor):
    """Sum of ``tensor`` over the processes (a new tensor)."""
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def share(obj, src=0):
    """The Python object ``obj`` of rank ``src``, on every process."""
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather(obj):
    """The Python objects ``obj`` of every process, in rank order, on every process."""
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def barrier():
    dist.barrier()


def shutdown():
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main():
    """True outside distributed training and on rank 0 inside it: the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
