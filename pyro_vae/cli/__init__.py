"""``pyro-vae``: train, evaluate, sample and explore from the command line.

This module is the only place that maps names (strings) to classes; the library itself takes objects.

    pyro-vae train                                  # default VAE on mnist5k, offline, ~2 minutes on 2 cores
    pyro-vae train --prior mog --likelihood continuous-bernoulli --latent-dim 2 --out runs/cb2d
    pyro-vae evaluate runs/cb2d --num-samples 5000
    pyro-vae sample runs/cb2d --num 100
    pyro-vae explore runs/cb2d --html               # interpolation, traversal and a page to explore them
    pyro-vae train --objective iwae --num-particles 5
    pyro-vae train --beta 4 --warmup 10                 # a beta-VAE with KL warm-up
    pyro-vae train --jit                            # the same ELBO compiled by torch.jit: less Python per step
    pyro-vae train --compile                        # force the replay step (the default picks it where exact)
    pyro-vae train --step pyro                      # Pyro's own ELBO every step, never the replay
    pyro-vae train --lr-schedule cosine --early-stopping 10 --tensorboard
    pyro-vae train --model m2 --labels 100 --latent-dim 16     # semi-supervised, 100 labelled digits
    pyro-vae train --model cvae && pyro-vae sample RUN         # one row per digit

The library is imported inside :func:`main` (``pyro_vae`` loads its modules on first use, and the modules of
this package import it only inside their functions), so a Ctrl-C or SIGTERM at any moment, start-up included,
ends with one line saying what is on disk.

The modules: :mod:`.flags` (the parser and the tables of names), :mod:`.train`, :mod:`.trained` (evaluate,
sample, explore), :mod:`.model_class` (``--model-class``), :mod:`.common` (what they share); this one
dispatches and turns errors, signals and warnings into one line each.
"""

import os
import signal
import sys
import warnings

import pyro_vae as pv

from .common import Interrupted, Terminated, error_path
from .flags import build_parser, with_preset
from .train import cmd_train
from .trained import cmd_evaluate, cmd_explore, cmd_sample

__all__ = ["COMMANDS", "Interrupted", "Terminated", "build_parser", "main"]

COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "explore": cmd_explore}


#: the signals received while :func:`main` imports the library. They are held until the imports finish:
#: an exception raised in the middle of an import can leave a half-imported module that fails later with an
#: unrelated error, or abort the interpreter when it crosses C++ code (seen with torch.distributed)
_SIGNALLED = []
_HOLDING = [False]


def _on_signal(signum, frame):
    _SIGNALLED.append(signum)
    if not _HOLDING[0]:
        _raise_for(signum)


def _raise_for(signum):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _build_parser_holding_signals():
    _SIGNALLED.clear()
    _HOLDING[0] = True
    try:
        parser = build_parser()   # the first use of the library: its imports happen here
    except Exception:
        if not _SIGNALLED:
            raise
    finally:
        _HOLDING[0] = False
    if _SIGNALLED:
        _raise_for(signal.SIGTERM if signal.SIGTERM in _SIGNALLED else _SIGNALLED[0])
    return parser


class _OneLineWarnings:
    """Warnings as one line each (``pyro-vae: warning: ...``), every distinct message once: a step that fails
    warns from every batch (Pyro's "Encountered NaN" comes twice a step), and the error that follows says the
    rest. Installed only over Python's own display, so a caller that records warnings (pytest) keeps them."""

    def __init__(self):
        self.seen, self.previous = set(), warnings.showwarning

    @classmethod
    def install(cls):
        if warnings.showwarning is not getattr(warnings, "_showwarning_orig", None):
            return None
        shown = cls()
        warnings.showwarning = shown.show
        return shown

    def show(self, message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if (category, text) not in self.seen:
            self.seen.add((category, text))
            print(f"pyro-vae: warning: {text}", file=file or sys.stderr)

    def uninstall(self):
        if warnings.showwarning == self.show:
            warnings.showwarning = self.previous


def _out_of_memory(error):
    """Whether ``error`` is torch's refusal to allocate (its CPU allocator raises a plain RuntimeError)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv=None):
    try:
        # Ctrl-C keeps Python's meaning (KeyboardInterrupt), and stays ignored where the caller ignores it
        sigint = _on_signal if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
        previous = signal.signal(signal.SIGTERM, _on_signal), sigint and signal.signal(signal.SIGINT, sigint)
    except ValueError:   # not the main thread: leave signals alone
        previous = None
    shown_warnings = _OneLineWarnings.install()
    args = None
    try:
        parser = _build_parser_holding_signals()
        args = with_preset(parser, parser.parse_args(argv), argv)
        return COMMANDS[args.command](args)
    except pv.PyroVAEError as e:
        if args is not None and args.debug:
            raise
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except (OSError, MemoryError, RuntimeError) as e:   # the system's refusals (unwritable --out, full disk, memory)
        if args is not None and args.debug:
            raise
        if isinstance(e, RuntimeError) and not _out_of_memory(e):
            raise
        if isinstance(e, (MemoryError, RuntimeError)):
            print("pyro-vae: error: out of memory; use smaller sizes (--hidden, --flow-hidden, --batch-size, "
                  "--num-samples, --num)", file=sys.stderr)
        else:
            where = error_path(e)
            print(f"pyro-vae: error: {where + ': ' if where else ''}{e.strerror or e}; check the path and its "
                  f"permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted) or (isinstance(e, Terminated) and str(e)):
            note = str(e)
        elif args is None:
            note = "nothing was written"
        elif args.command == "evaluate":
            from ..runs import METRICS
            note = f"{os.path.join(args.run, METRICS)} is unchanged"
        elif args.command in ("sample", "explore"):
            note = "no pictures were written"
        else:   # cmd_train says more once fit has started
            note = "training had not started; nothing was written"
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"pyro-vae: {what}; {note}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if shown_warnings is not None:
            shown_warnings.uninstall()
        processes = sys.modules.get("pyro_vae.training.processes")   # only where it was imported
        if processes is not None:
            processes.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            if previous[1] is not None:
                signal.signal(signal.SIGINT, previous[1])
