import os

import pytest
import torch

import pyro

import pyro_vae as pv

# two cores: more threads only add contention
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def digits_binary():
    """scikit-learn's real 8x8 digits: dynamic binarization for training, static for test."""
    return pv.data.load("digits", binarize="dynamic")


@pytest.fixture(scope="session")
def digits_grey():
    return pv.data.load("digits", binarize="none")


@pytest.fixture(scope="session")
def mnist5k():
    return pv.data.load("mnist5k", binarize="dynamic")
