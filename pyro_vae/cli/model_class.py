"""``--model-class module:Class``: the class of a run trained from Python with a model of one's own, imported from
the flag only (config.json only names the class, and is never a source of code), and the run loaded with it."""

import os
import re
import sys

import pyro_vae as pv


def _reason(error):
    """An exception as one short line: its type and message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"


def _import_module(where, spec):
    """The module of ``--model-class``: a file ``path/to/file.py`` or a dotted name (current folder first, as
    ``python -m`` has it, then ``sys.path``). Either runs the user's code: that is what the flag asks for."""
    import importlib
    import importlib.util
    if where.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(where))
        if not os.path.isfile(path):
            raise pv.ConfigError(f"--model-class {spec}: there is no file {where}; give the path of the .py file that "
                                 f"defines the class")
        name = "_pyro_vae_model_class_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
        sys.modules[name] = module   # before it runs, as import does (dataclasses and pickling look it up)
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)   # so it imports the modules beside it, as `python file.py` would
        try:
            module.__spec__.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise pv.ConfigError(f"--model-class {spec}: importing {where} failed ({_reason(e)}); fix that "
                                 f"file") from None
        return module
    if not all(part.isidentifier() for part in where.split(".")):
        raise pv.ConfigError(f"--model-class {spec!r:.80} names neither a module nor a .py file before the colon; "
                             f"write module:Class or path/to/file.py:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name == where or where.startswith(f"{e.name}."):
            raise pv.ConfigError(f"--model-class {spec}: no module {where!r} in the current folder or on sys.path; "
                                 f"run from the folder that holds it, or give its file: --model-class "
                                 f"path/to/{where.split('.')[-1]}.py:{spec.rpartition(':')[2]}") from None
        raise pv.ConfigError(f"--model-class {spec}: importing {where} failed (it imports {e.name!r}, which is not "
                             f"installed); install {e.name} or fix {where}") from None
    except Exception as e:
        raise pv.ConfigError(f"--model-class {spec}: importing {where} failed ({_reason(e)}); fix that "
                             f"module") from None


def _import_model_class(spec):
    """The class ``--model-class module:Class`` (or ``path/to/file.py:Class``) names."""
    where, colon, name = spec.rpartition(":")
    if not (colon and where and all(part.isidentifier() for part in name.split("."))):
        raise pv.ConfigError(f"--model-class {spec!r:.80} is not module:Class; write e.g. --model-class "
                             f"mymodels:MyVAE, or --model-class path/to/mymodels.py:MyVAE")
    module = _import_module(where, spec)
    found = module
    for part in name.split("."):
        if not hasattr(found, part):
            own = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, pv.VAE)
                         and v.__module__ == module.__name__)
            listed = f" (its model classes: {', '.join(own)})" if own else ""
            raise pv.ConfigError(f"--model-class {spec}: {where} has no attribute {name!r}{listed}; name the "
                                 f"class after the colon")
        found = getattr(found, part)
    if not isinstance(found, type):
        raise pv.ConfigError(f"--model-class {spec}: {name} is a {type(found).__name__}, not a class; name the "
                             f"model class (e.g. a pv.VAE subclass)")
    return found


def _recorded_model(run):
    """``(class name, own)``: the model class a run's config.json names (``None`` when it cannot be read), and
    whether it is the user's own: not one of this package's, or a module of one's own wrapped by ``pv.wrap``."""
    from ..runs import RunFolder
    try:
        config = RunFolder(run, main=False).config()
    except pv.PyroVAEError:
        return None, False
    entry = config.get("vae") if isinstance(config, dict) else None
    name = entry.get("model", "VAE") if isinstance(entry, dict) else None
    if not (isinstance(name, str) and name.isidentifier()):
        return None, False
    from ..models.registry import model_classes
    return name, "wrapped" in entry or name not in model_classes()


def load_run(args):
    """``pv.load_run`` for evaluate/sample/explore, with ``--model-class``; a refusal about the class names the flag.

    config.json only names the run's class: it is compared with the class the flag imports, never imported."""
    model_class = None if args.model_class is None else _import_model_class(args.model_class)
    try:
        return pv.load_run(args.run, device=pv.resolve_device(args.device), model_class=model_class)
    except pv.ConfigError:
        recorded, own = _recorded_model(args.run)
        if recorded is None or (model_class is not None and recorded == model_class.__name__):
            raise
        if model_class is None and own:
            raise pv.ConfigError(f"{args.run} was trained with a model class of your own, {recorded}; pass it with "
                                 f"--model-class module:{recorded} (the module that defines it, in the current "
                                 f"folder or on sys.path) or --model-class path/to/file.py:{recorded}") from None
        if model_class is not None and not own:
            raise pv.ConfigError(f"{args.run} was trained with pyro_vae's own {recorded}, not "
                                 f"{model_class.__name__}; drop --model-class") from None
        if model_class is not None:
            raise pv.ConfigError(f"{args.run} was trained with the model class {recorded}, not "
                                 f"{model_class.__name__}; pass --model-class module:{recorded}") from None
        raise
