from . import scores as _scores
from .scores import *  # noqa: F401,F403


def __getattr__(name):
    return getattr(_scores, name)
