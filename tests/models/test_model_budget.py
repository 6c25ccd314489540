"""One model budget: every network counts toward it, a config.json naming a huge model is refused before anything
is built, and torch's allocation failure becomes the one-line out-of-memory message."""

import json
import resource

import pytest
import torch


import pyro_vae as pv
from pyro_vae import cli
from clirun import small_vae, exit_and_stderr, one_line_error, DIGITS


# --- 4-5. one model budget, and torch's allocation failure -----------------------------------------------



@pytest.mark.parametrize("args,needle", [
    (["--hidden", "30000", "30000"], "use a smaller --hidden"),
    (["--prior", "flow", "--flow-hidden", "65536"], "FlowPrior would have"),
    (["--guide", "iaf", "--flow-hidden", "65536"], "IAF would have"),
    (["--prior", "flow", "--flow-hidden", "12000", "--num-flows", "4"], "use a smaller --flow-hidden"),
    (["--guide", "iaf", "--flow-hidden", "12000", "--num-flows", "4"], "use a smaller --flow-hidden"),
    (["--model", "m2", "--hidden", "30000", "30000"], "use a smaller --hidden"),
    (["--model", "hvae", "--hidden", "30000", "30000"], "use a smaller --hidden"),
])
def test_every_network_counts_toward_one_model_budget(args, needle, tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = one_line_error(*exit_and_stderr("train", *DIGITS, *args, "--out", tmp_path / "run"), needle)
    assert "weights" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB: nothing allocated
    assert not (tmp_path / "run").exists()


def test_the_model_budget_sums_the_networks_and_names_its_setting():
    with pv.util.model_budget() as tally:
        vae = pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,), prior=pv.priors.FlowPrior(2, 8),
                     posterior=pv.posteriors.IAF(2, 8))
    assert tally["weights"] == sum(p.numel() for p in vae.parameters())
    assert set(tally["parts"]) == {"MLPEncoder", "MLPDecoder", "FlowPrior", "IAF"}
    limit = pv.util.MAX_MODEL_BYTES
    try:
        pv.util.MAX_MODEL_BYTES = 16 * tally["weights"] - 1
        with pytest.raises(pv.util.BudgetError, match="MAX_MODEL_BYTES") as caught, pv.util.model_budget():
            pv.VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=(16,), prior=pv.priors.FlowPrior(2, 8),
                   posterior=pv.posteriors.IAF(2, 8))
        assert caught.value.part == "IAF" and caught.value.largest == "MLPDecoder"
    finally:
        pv.util.MAX_MODEL_BYTES = limit


def test_a_config_json_naming_a_huge_model_is_refused_before_building(tmp_path):
    run = tmp_path / "run"
    pv.fit(small_vae(), pv.data.load("digits", binarize="static")[0].subset(range(16)), epochs=1, batch_size=16,
           progress=False, checkpoint_dir=run, eval_samples=0, pictures=False)
    config = json.loads((run / "config.json").read_text())
    config["vae"]["encoder"]["kwargs"]["hidden"] = [30000, 30000]
    config["vae"]["decoder"]["kwargs"]["hidden"] = [30000, 30000]
    (run / "config.json").write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(pv.ConfigError, match="MAX_MODEL_BYTES"):
        pv.load_run(run)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 21600000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_torch_allocation_failure_is_the_one_line_out_of_memory_message(error, tmp_path, monkeypatch):
    def fit(*args, **kwargs):
        raise error
    monkeypatch.setattr(pv, "fit", fit)
    one_line_error(*exit_and_stderr("train", *DIGITS, "--hidden", "8", "--out", tmp_path / "run"),
                   "out of memory", "--hidden")


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, monkeypatch):
    def fit(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(pv, "fit", fit)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", *DIGITS, "--hidden", "8", "--out", str(tmp_path / "run")])
