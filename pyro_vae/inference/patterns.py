"""What a replayed graph of :mod:`~pyro_vae.inference.replay` depends on and what it freezes of a model.

A graph is traced per *signature* of the step's inputs (:func:`split_inputs`) and keeps the sites of the run
it was traced on: their names, distributions, shapes, scales and masks. :class:`SitePatterns` compares those
over trial runs of several batches, so that a model whose sites change from batch to batch (a replay would
keep the first batch's) is found before training; :class:`BuffersKept` lets such trial runs leave the module
as it was. Pyro's public API only: the trial runs themselves are made in :mod:`~pyro_vae.inference.replay`.
"""

import numbers

import torch

from ..errors import ConfigError


def split_inputs(x, y, kwargs):
    """``(tensors, layout, signature)``: the tensor inputs, where each argument comes from, and what a trace
    depends on (shapes, dtypes and devices of the tensors, the values of the others).

    :param x: images ``(N, C, H, W)``.
    :param y: labels ``(N,)`` or ``None``.
    :param dict kwargs: further keyword inputs of model and guide: tensors or hashable values.
    :returns: ``tensors`` a list, ``layout`` a tuple of ``(name, True, index into tensors)`` or
        ``(name, False, value)``, ``signature`` a hashable tuple.
    :raises ConfigError: a keyword value that is neither a tensor nor hashable.
    """
    tensors, layout, signature = [], [], []
    for key, value in (("x", x), ("y", y), *sorted(kwargs.items())):
        if isinstance(value, torch.Tensor):
            layout.append((key, True, len(tensors)))
            tensors.append(value)
            signature.append((key, tuple(value.shape), value.dtype, value.device))
        else:
            try:
                hash(value)
            except TypeError:
                raise ConfigError(f"keyword argument {key}= of the sync-free step must be a tensor or a hashable "
                                  f"value (the graph is traced per value), got {type(value).__name__}") from None
            layout.append((key, False, value))
            signature.append((key, type(value), value))
    return tensors, tuple(layout), tuple(signature)


def rebuild(layout, tensors):
    """The model's ``(args, kwargs)`` from a layout of :func:`split_inputs` and its tensors: ``args`` is
    ``(x,)``, or ``(x, y)`` when there are labels."""
    values = {key: tensors[where] if is_tensor else where for key, is_tensor, where in layout}
    x, y = values.pop("x"), values.pop("y")
    return ((x,) if y is None else (x, y)), values


class BuffersKept:
    """Put the module's buffers back as they were after a block that runs it only to look (a train-mode batch
    norm updates its running statistics on every forward pass, which a trial run must not do)."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.saved = [(b, b.detach().clone()) for b in self.module.buffers()]

    def __exit__(self, *exc):
        with torch.no_grad():
            for buffer, value in self.saved:
                buffer.copy_(value)


def site_pattern(sites, exact):
    """What a trace freezes of each site, in order.

    :param sites: ``(role, name, site)`` per sample site, ``role`` ``"model"`` or ``"guide"``, ``site`` Pyro's
        trace entry.
    :param bool exact: keep the shapes, scales and masks too (batches of one signature share one graph, so
        their sites must agree in everything); otherwise only what every batch size must share.
    :returns: a list of tuples, one per site, comparable with ``==``.
    """
    pattern = []
    for role, name, site in sites:
        fn = site["fn"]
        entry = (role, name, type(fn).__name__, bool(site["is_observed"]), tuple(getattr(fn, "event_shape", ())))
        if exact:
            scale = site["scale"]
            entry += (tuple(site["value"].shape), tuple(getattr(fn, "batch_shape", ())),
                      float(scale) if isinstance(scale, numbers.Number) else ("tensor", tuple(scale.shape)),
                      site["mask"] is None or ("mask", tuple(torch.as_tensor(site["mask"]).shape)))
        pattern.append(entry)
    return pattern


def describe_pattern(pattern):
    """One line naming the sites of a :func:`site_pattern`."""
    return ", ".join(f"{role} {name!r} {kind}" for role, name, kind, *_ in pattern) or "no sites"


class SitePatterns:
    """The sites of trial runs, batch by batch: :meth:`add` says when one run disagrees with those before it
    on what a replayed graph would freeze."""

    def __init__(self):
        self.first, self.by_signature = None, {}

    def add(self, signature, sites):
        """``None``, or one line saying what a replay would get wrong on this run.

        :param signature: the run's input signature (:func:`split_inputs`).
        :param sites: its ``(role, name, site)`` per sample site, in trace order.
        """
        for _, name, site in sites:
            if site["infer"].get("enumerate") is not None:
                return f"site {name!r} is marked for enumeration, which the replay step does not sum out"
        exact, coarse = site_pattern(sites, True), site_pattern(sites, False)
        seen = self.by_signature.setdefault(signature, exact)
        if seen != exact:
            diff = next((a, b) for a, b in zip(seen + [None] * len(exact), exact + [None] * len(seen)) if a != b)
            return (f"the model's sites change between batches of the same shape ({diff[0]} in one, {diff[1]} in "
                    f"another): a replayed graph would keep the first batch's sites for every batch")
        if self.first is None:
            self.first = coarse
        elif coarse != self.first:
            return (f"the model's sites change between batches ({describe_pattern(self.first)} in one; "
                    f"{describe_pattern(coarse)} in another): a replayed graph would keep the first batch's sites")
        return None
