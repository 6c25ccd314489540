"""Reload anything that trains: every model class of the README and the tutorials trains one epoch on real digits
with ``fit(checkpoint_dir=...)``, reloads with ``pv.load_run`` and scores exactly as the model in memory did.

The README's classes are taken from its code blocks, so this breaks when the README changes; the tutorials'
models are built as they build them (smaller), and a VAE subclass defined in a tutorial must have a case here.
"""

import ast
import os
import re
import warnings

import pytest
import torch

import pyro
from pyro.infer import TraceEnum_ELBO

import pyro_vae as pv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (1, 8, 8)


def _readme_classes():
    """``{name: class}`` of every ``pv.VAE`` subclass defined in a README code block, the blocks run in order in
    one namespace (a later block may use an earlier one's imports); only their imports and class definitions run."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    namespace, names = {}, []
    for block in blocks:
        tree = ast.parse(block)
        classes = [node for node in tree.body if isinstance(node, ast.ClassDef)
                   and any(ast.unparse(base) == "pv.VAE" for base in node.bases)]
        if classes:
            kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))] + classes
            exec(compile(ast.Module(body=kept, type_ignores=[]), "README.md", "exec"), namespace)
            names += [node.name for node in classes]
    return {name: namespace[name] for name in names}


README_CLASSES = _readme_classes()


def _tutorial_subclasses():
    """Names of the classes the tutorials define on top of a pyro_vae model class."""
    found = set()
    for name in sorted(os.listdir(os.path.join(ROOT, "tutorials"))):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "tutorials", name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(
                        re.fullmatch(r"(pv\.(extended\.)?)?(VAE|ConditionalVAE|M2|GMVAE|HierarchicalVAE)",
                                     ast.unparse(base)) for base in node.bases):
                    found.add(node.name)
    return found


def _labelled(digits, n):
    return digits.subset(range(n))


def _with_covariates(grey, n, binarize):
    """``n`` real digits with one covariate each, the label scaled to [0, 1] (shape ``(n, 1)``)."""
    labels = grey.labels[:n]
    return pv.data.from_tensor(grey.images[:n], labels=labels, covariates=labels[:, None].float() / 9.0,
                               binarize=binarize, name="digits-with-covariates")


# name -> (build the untrained model, training data, test data, fit keywords), from the session's digits
CASES = {
    "LabelledVAE": lambda b, g: (lambda: README_CLASSES["LabelledVAE"](image_shape=SHAPE, latent_dim=2, hidden=(16,)),
                                 _labelled(b[0], 48), _labelled(b[1], 40), {}),
    "CovariateVAE": lambda b, g: (lambda: README_CLASSES["CovariateVAE"](image_shape=SHAPE, latent_dim=2,
                                                                          num_covariates=1, hidden=(16,)),
                                  _with_covariates(g[0], 48, "dynamic"), _with_covariates(g[1], 40, "static"), {}),
    # tutorial 01: the library's VAE with the networks of the hand-written one (softplus MLPs)
    "VAE": lambda b, g: (lambda: pv.VAE(image_shape=SHAPE, latent_dim=2,
                                        encoder=pv.networks.MLPEncoder(SHAPE, 2, hidden=(16,), activation="Softplus"),
                                        decoder=pv.networks.MLPDecoder(SHAPE, 2, hidden=(16,), activation="Softplus"),
                                        prior=pv.priors.StandardNormal(), likelihood=pv.likelihoods.Bernoulli()),
                         _labelled(b[0], 48), _labelled(b[1], 40), {}),
    # tutorial 04: a conditional VAE, then M2 with most labels hidden and the unknown ones summed out
    "ConditionalVAE": lambda b, g: (lambda: pv.extended.ConditionalVAE(image_shape=SHAPE, latent_dim=2, num_classes=10,
                                                                       hidden=(16,)),
                                    _labelled(b[0], 48), _labelled(b[1], 40), {}),
    "M2": lambda b, g: (lambda: pv.extended.M2(image_shape=SHAPE, latent_dim=2, num_classes=10, hidden=(16,),
                                               classifier_hidden=(16,), alpha=4.8),
                        pv.extended.keep_labels(_labelled(b[0], 60), 20, seed=0), _labelled(b[1], 40),
                        {"loss": TraceEnum_ELBO(max_plate_nesting=1)}),
}
#: classes the tutorials build (pv.VAE in every one, the two labelled models in 04)
TUTORIAL_CLASSES = ("VAE", "ConditionalVAE", "M2")


def test_every_readme_and_tutorial_model_has_a_case():
    assert {"LabelledVAE", "CovariateVAE"} <= set(README_CLASSES)
    missing = (set(README_CLASSES) | _tutorial_subclasses()) - set(CASES)
    assert not missing, f"add a reload case for {sorted(missing)} to CASES"


def _score(vae, data):
    """The ELBO and its parts with a fixed seed: equal for equal models."""
    pyro.set_rng_seed(0)
    return pv.evaluate.elbo(vae, data, num_samples=2)


@pytest.mark.parametrize("name", list(CASES))
def test_a_trained_model_reloads_to_identical_scores(name, digits_binary, digits_grey, tmp_path):
    build, train, test, fit_keywords = CASES[name](digits_binary, digits_grey)
    torch.manual_seed(0)
    vae = build()
    cls = type(vae)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        # a class of one's own is named in config.json but needs model_class= to reload: fit says so
        warnings.simplefilter("ignore", pv.train.RebuildWarning)
        pv.fit(vae, train, epochs=1, batch_size=16, progress=False, device="cpu", checkpoint_dir=run,
               pictures=False, **fit_keywords)
    own = name in README_CLASSES
    again, config, state = pv.load_run(run, model_class=cls if own else None)
    assert type(again) is cls and state["epoch"] == 1 and config["vae"]["model"] == name
    trained = {k: v for k, v in vae.state_dict().items()}
    assert trained.keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.items())
    expected = _score(vae, test)
    assert all(torch.isfinite(torch.tensor(v)) for v in expected.values())
    assert _score(again, test) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert _score(build(), test) != pytest.approx(expected, rel=1e-3)   # other weights: the score tells them apart
    if name in TUTORIAL_CLASSES:   # the library's own classes also reload when named
        assert _score(pv.load_run(run, model_class=cls)[0], test) == pytest.approx(expected, rel=1e-6, abs=1e-6)
