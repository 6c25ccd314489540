"""Evaluation: ELBO, importance-sampled log p(x), active units, the whole report, and diagnostics — per
datapoint, in nats (see :mod:`~pyro_vae.evaluate.scores` for what each number bounds)."""

from .report import report
from .scores import (MAX_PAIRS, accuracy, active_units, bits_per_dim, check, check_data, elbo, eval_mode,
                     log_likelihood, log_weight_terms, quantity)

__all__ = ["MAX_PAIRS", "accuracy", "active_units", "bits_per_dim", "check", "check_data", "elbo", "eval_mode",
           "log_likelihood", "log_weight_terms", "quantity", "report"]
