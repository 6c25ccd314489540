import os
import shutil

import pytest
import torch

import pyro

import pyro_vae as pv

import clirun

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


@pytest.fixture(scope="session")
def train_small_model():
    """``train(kind, train, top_latent=3)``: a tiny model of ``kind`` ("vae", "cvae", "m2" or "hvae") trained for two
    epochs on 500 of the 8x8 digits, enough to give its codes some structure (the picture tests check what the
    pictures show against the model, not how good the model is). ``top_latent``: the latent size of cvae and
    of hvae's z2 (vae has 4, m2 3)."""
    def train_model(kind, train, top_latent=3):
        torch.manual_seed(0)
        train = train.subset(range(500))
        if kind == "vae":
            vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=4, hidden=(32,))
        elif kind == "cvae":
            vae = pv.extended.ConditionalVAE(image_shape=(1, 8, 8), latent_dim=top_latent, num_classes=10,
                                             hidden=(32,))
        elif kind == "m2":   # every label kept: nothing to enumerate, so the plain ELBO and a fast fit
            vae = pv.extended.M2(image_shape=(1, 8, 8), latent_dim=3, num_classes=10, hidden=(32,),
                                 classifier_hidden=(32,))
        else:
            vae = pv.extended.HierarchicalVAE(image_shape=(1, 8, 8), latent_dims=(4, top_latent), hidden=(32,),
                                              latent_hidden=(16,))
        pv.fit(vae, train, epochs=2, progress=False, device="cpu")
        return vae.eval()
    return train_model


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip on a machine without a GPU (select them with ``-m cuda``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished one-epoch run made by ``pyro-vae train`` (in this process), copied by the tests that change it."""
    folder = tmp_path_factory.mktemp("base") / "run"
    result = clirun.main_in_process(*clirun.train_args(folder))
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def run(base_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base_run, folder)
    return folder
