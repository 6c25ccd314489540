"""Pyro traces read for inference: the per-datapoint log-weight terms every estimate is built from
(:mod:`.traces`), the sync-free training step (:mod:`.replay`, the one module allowed Pyro/torch internals) and the
IWAE gradient estimators (:mod:`.estimators`)."""
