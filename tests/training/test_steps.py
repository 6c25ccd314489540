"""fit's choice of step: the sync-free replay where it is exact, Pyro's own ELBO otherwise, and the reason."""

import json
import warnings

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro.infer import JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

import pyro_vae as pv
from pyro_vae import extended, fast

SHAPE = (1, 8, 8)


def tiny(cls=pv.VAE, **kwargs):
    return cls(image_shape=SHAPE, **{"latent_dim": 2, "hidden": (16,), **kwargs})


@pytest.fixture(scope="module")
def digits(digits_binary):
    """300 training digits (three batches of 128, the last smaller) and 100 test digits."""
    train, test = digits_binary
    return train.subset(range(300)), test.subset(range(100))


def run(make, train, seed=0, **options):
    """``fit`` of a model made by ``make()`` from a seeded random state (so equal calls give equal weights)."""
    pyro.set_rng_seed(seed)
    vae = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pv.train.RebuildWarning)
        return pv.fit(vae, train, seed=seed, **{"progress": False, "eval_samples": 0, "pictures": False, **options})


def fit_record(folder):
    with open(folder / "config.json") as f:
        return json.load(f)["fit"]


def elbos(history):
    return [h["train_elbo"] for h in history]


class ExtraSite(pv.VAE):
    """pv.VAE with a latent site ``w`` in front of ``z`` where :meth:`extra` says so."""

    def extra(self, y):
        return False

    def model(self, x, y=None, covariates=None):
        with pyro.plate("data", x.shape[0]):
            if self.extra(y):
                pyro.sample("w", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None, covariates=None):
        with pyro.plate("data", x.shape[0]):
            if self.extra(y):
                pyro.sample("w", dist.Normal(x.new_zeros(x.shape[0], 1), 2.0).to_event(1))
            pyro.sample("z", self.posterior(*self.encoder(x)))


class ExtraSiteWhenUnlabelled(ExtraSite):
    """``w`` only in batches with unlabelled images (-1): the sites depend on the labels' values."""

    def extra(self, y):
        return y is not None and bool((y < 0).any())


class Alternating(ExtraSite):
    """``w`` comes and goes from one guide call to the next (Python state, not data): a trace would freeze it."""

    calls = 0

    def guide(self, x, y=None, covariates=None):
        self.calls += 1
        self.flag = self.calls % 2 == 0
        return super().guide(x, y, covariates)

    def extra(self, y):
        return getattr(self, "flag", False)


class Tempered(pv.VAE):
    """The decoder's logits divided by a temperature that a callback changes between epochs."""

    temperature = 1.0

    def model(self, x, y=None, covariates=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z) / self.temperature), obs=x)


class ReadsBack(pv.VAE):
    """Fixed sites, but a host read of a tensor's value, which the tracer cannot follow."""

    def model(self, x, y=None, covariates=None):
        self.mean_pixel = float(x.mean())
        return super().model(x, y, covariates)


def test_default_is_the_replay_and_equals_forcing_it(digits, tmp_path):
    train, _ = digits
    auto = run(tiny, train, epochs=2, checkpoint_dir=tmp_path / "auto", beta=2.0, warmup=2)
    record = fit_record(tmp_path / "auto")
    assert record["step"] == "replay" and "Trace_ELBO" in record["step_reason"] and "compile" not in record
    forced = run(tiny, train, epochs=2, compile=True, beta=2.0, warmup=2)
    assert elbos(auto) == elbos(forced)   # the same graphs, traced before the first step in both
    pyro_path = run(tiny, train, epochs=2, compile=False, beta=2.0, warmup=2)
    # the same estimator and draws as Pyro's Trace_ELBO: equal to float rounding
    assert elbos(auto) == pytest.approx(elbos(pyro_path), rel=1e-5)


def test_compile_false_forces_pyro(digits, tmp_path):
    run(tiny, digits[0], epochs=1, compile=False, checkpoint_dir=tmp_path)
    record = fit_record(tmp_path)
    assert record["step"] == "pyro" and "compile=False" in record["step_reason"]


@pytest.mark.parametrize("make, expected", [
    (lambda: (tiny(), TraceMeanField_ELBO()), "not TraceMeanField_ELBO's"),
    (lambda: (tiny(), RenyiELBO(alpha=0, num_particles=2, vectorize_particles=True)), "not RenyiELBO's"),
    (lambda: (tiny(), JitTrace_ELBO(ignore_jit_warnings=True)), "torch.jit"),
    (lambda: (tiny(extended.GMVAE, prior=pv.priors.MixtureOfGaussians(3)), None), "TraceEnum_ELBO sums"),
], ids=["meanfield", "iwae", "jit", "gmvae"])
def test_other_estimators_fall_back_with_the_reason(make, expected, digits, tmp_path):
    vae, loss = make()
    run(lambda: vae, digits[0], epochs=1, loss=loss, checkpoint_dir=tmp_path)
    record = fit_record(tmp_path)
    assert record["step"] == "pyro" and expected in record["step_reason"], record["step_reason"]


def test_labels_that_change_the_sites_are_detected(digits, tmp_path):
    train = extended.keep_labels(digits[0], 200)   # the batch of the highest labels has no -1
    history = run(lambda: tiny(ExtraSiteWhenUnlabelled), train, epochs=1, checkpoint_dir=tmp_path)
    record = fit_record(tmp_path)
    assert record["step"] == "pyro" and "sites change between batches" in record["step_reason"]
    assert "'w'" in record["step_reason"]
    assert history[-1]["train_elbo"] < 0


def test_sites_that_change_from_step_to_step_are_detected(digits):
    trainer_settings = []

    class Remember(pv.hooks.Hook):
        def on_fit_start(self, trainer):
            trainer_settings.append(trainer.settings)

    run(lambda: tiny(Alternating), digits[0], epochs=1, hooks=[Remember()])
    assert trainer_settings[0].step == "pyro"
    assert "same shape" in trainer_settings[0].step_reason and "'w'" in trainer_settings[0].step_reason


def test_a_model_changed_by_a_callback_is_detected(digits, tmp_path):
    def warm(vae, record):
        vae.temperature = 2.0   # a replayed graph would go on dividing by 1

    with pytest.warns(RuntimeWarning, match="another loss than its graph"):
        history = run(lambda: tiny(Tempered), digits[0], epochs=3, callback=warm, checkpoint_dir=tmp_path)
    record = fit_record(tmp_path)
    assert record["step"] == "pyro" and "before epoch 2" in record["step_reason"]
    # from epoch 2 on, Pyro's ELBO of the changed model: what compile=False computes too, to rounding
    reference = run(lambda: tiny(Tempered), digits[0], epochs=3, callback=warm, compile=False)
    assert elbos(history) == pytest.approx(elbos(reference), rel=1e-5)


def test_a_model_the_tracer_cannot_follow_falls_back_before_training(digits, tmp_path):
    train, _ = digits
    history = run(lambda: tiny(ReadsBack), train, epochs=2, checkpoint_dir=tmp_path)
    record = fit_record(tmp_path)
    assert record["step"] == "pyro" and "cannot trace" in record["step_reason"]
    assert elbos(history) == elbos(run(lambda: tiny(ReadsBack), train, epochs=2, compile=False))
    with pytest.raises(pv.ConfigError, match="cannot be traced"):   # forcing it raises, as before
        run(lambda: tiny(ReadsBack), train, epochs=1, compile=True)


def test_a_trace_failing_during_training_falls_back_in_place(digits, tmp_path, monkeypatch):
    # nothing traced ahead: the trace after the first (eager) call is the one that fails
    monkeypatch.setattr(fast._Step, "prepare", lambda self, *args, **kwargs: None)
    train, _ = digits
    with pytest.warns(RuntimeWarning, match="could not trace a batch"):
        history = run(lambda: tiny(ReadsBack), train, epochs=2, checkpoint_dir=tmp_path)
    record = fit_record(tmp_path)
    assert record["step"] == "pyro" and "could not trace a batch" in record["step_reason"]
    # the failing call was fit's priming call, outside the run: the run is Pyro's path all along
    assert elbos(history) == elbos(run(lambda: tiny(ReadsBack), train, epochs=2, compile=False))


def test_the_failing_call_keeps_its_gradients_once(digits):
    x, _ = next(digits[0].batches(64, generator=torch.Generator().manual_seed(0)))
    vae = tiny(ReadsBack)
    vae.register_params = False
    errors = []
    step = fast.make_step(Trace_ELBO(), vae, "cpu", on_trace_error=errors.append)
    pyro.set_rng_seed(5)
    with pyro.validation_enabled(False):
        expected = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    expected.backward()
    reference = {n: p.grad.clone() for n, p in vae.named_parameters()}
    for p in vae.parameters():
        p.grad = None
    pyro.set_rng_seed(5)
    loss = step(x)
    assert len(errors) == 1 and isinstance(errors[0], pv.ConfigError) and not step.graphs
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    for name, p in vae.named_parameters():
        assert torch.allclose(p.grad, reference[name], rtol=1e-5, atol=1e-6), name


def test_resume_makes_the_same_choice(digits, tmp_path):
    train, _ = digits
    run(tiny, train, epochs=1, checkpoint_dir=tmp_path)
    resumed = run(tiny, train, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert len(resumed) == 2 and fit_record(tmp_path)["step"] == "replay"
    # the step is a setting of the run: resuming on the other one would mix two runs
    with pytest.raises(pv.CheckpointError, match="step"):
        run(tiny, train, epochs=3, checkpoint_dir=tmp_path, resume=True, compile=False)


def test_a_pyro_run_resumes_whatever_the_reason(digits, tmp_path):
    train, _ = digits
    run(tiny, train, epochs=1, loss=TraceMeanField_ELBO(), checkpoint_dir=tmp_path)
    reason = fit_record(tmp_path)["step_reason"]
    run(tiny, train, epochs=2, loss=TraceMeanField_ELBO(), checkpoint_dir=tmp_path, resume=True, compile=False)
    assert fit_record(tmp_path)["step_reason"] == reason


def test_a_run_recorded_before_the_choice_resumes_on_pyro(digits, tmp_path):
    train, _ = digits
    straight = run(tiny, train, epochs=3, compile=False)
    run(tiny, train, epochs=2, compile=False, checkpoint_dir=tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    for key in ("step", "step_reason"):   # as such a run's config.json has it
        del config["fit"][key]
    path.write_text(json.dumps(config))
    history = run(tiny, train, epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert elbos(history) == elbos(straight)
    assert "step" not in fit_record(tmp_path)


def test_compile_values(digits):
    for value in ("auto", "pyro"):
        assert len(run(tiny, digits[0], epochs=1, compile=value)) == 1
    with pytest.raises(pv.ConfigError, match="compile must be"):
        run(tiny, digits[0], epochs=1, compile="fastest")


def test_choose_step_without_fit(digits):
    batches = [next(digits[0].batches(32, generator=torch.Generator().manual_seed(s))) for s in (0, 1)]
    batches = [(x, y, {}) for x, y in batches]
    assert pv.train.choose_step(Trace_ELBO(), tiny(), batches)[0] == "replay"
    kind, reason = pv.train.choose_step(TraceEnum_ELBO(max_plate_nesting=1), tiny(), batches)
    assert kind == "pyro" and "enumerated" in reason


def test_final_evaluation_says_its_cost_and_shows_progress(digits, tmp_path, capsys, monkeypatch):
    train, test = digits
    run(tiny, train, test=test, epochs=1, checkpoint_dir=tmp_path / "quiet", eval_samples=3)
    assert "final evaluation" not in capsys.readouterr().out   # short, and progress off: nothing printed
    pyro.set_rng_seed(0)
    pv.fit(tiny(), train, test=test, epochs=1, checkpoint_dir=tmp_path / "shown", eval_samples=3, pictures=False,
           progress=True)
    captured = capsys.readouterr()
    assert "final evaluation: log p(x) with K=3 importance samples on 100 images, about" in captured.out
    assert "log p(x), K=3" in captured.err   # its progress bar
    # a long one is announced even without progress bars
    monkeypatch.setattr(pv.hooks, "QUIET_EVALUATION_SECONDS", -1)
    run(tiny, train, test=test, epochs=1, checkpoint_dir=tmp_path / "long", eval_samples=3)
    assert "final evaluation" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 3


def test_cli_step_flag(tmp_path):
    from pyro_vae import cli
    tiny_run = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                "--eval-samples", "2", "--batch-size", "128", "--no-progress"]
    for flags, step in ((["--step", "pyro"], "pyro"), ([], "replay"), (["--compile"], "replay")):
        out = tmp_path / (flags[-1].strip("-") if flags else "auto")
        assert cli.main(tiny_run + flags + ["--out", str(out)]) == 0
        assert fit_record(out)["step"] == step
    for flags in (["--step", "pyro", "--compile"], ["--step", "replay", "--model", "m2", "--labels", "100"]):
        assert cli.main(tiny_run + flags + ["--out", str(tmp_path / "refused")]) == 2
