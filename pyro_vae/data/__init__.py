from . import core as _core
from .core import *  # noqa: F401,F403


def __getattr__(name):
    return getattr(_core, name)
