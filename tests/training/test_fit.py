"""fit: learning on real data, seeds, checkpoints, resume, numerical faults, bad input."""

import math
import os

import pytest
import torch
from torch import nn

import pyro
from pyro.infer import JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

import pyro_vae as pv
from pyro_vae import checkpoint, likelihoods, priors


def small_vae(**kwargs):
    return pv.VAE(image_shape=(1, 8, 8), **{"latent_dim": 4, "hidden": (32,), **kwargs})


def test_elbo_improves_on_mnist5k(mnist5k):
    train, test = mnist5k
    vae = pv.VAE(latent_dim=16, hidden=(128,))
    before = pv.evaluate.elbo(vae, test)["elbo"]
    history = pv.fit(vae, train, test=test, epochs=3, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] > before + 100   # ~-545 -> ~-150 nats
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    assert all(h["seconds"] > 0 for h in history)


def _weights(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def test_equal_seeds_give_equal_runs(digits_binary):
    runs = []
    for _ in range(2):
        pyro.set_rng_seed(3)  # the initial weights come from the global RNG too
        vae = small_vae()
        history = pv.fit(vae, digits_binary[0], test=digits_binary[1], epochs=2, seed=3, progress=False)
        runs.append((history, _weights(vae)))
    assert [h["train_elbo"] for h in runs[0][0]] == [h["train_elbo"] for h in runs[1][0]]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    other = small_vae()
    history = pv.fit(other, digits_binary[0], epochs=2, seed=4, progress=False)
    assert history[-1]["train_elbo"] != runs[0][0][-1]["train_elbo"]


def _draws_pictures(vae, record):
    vae.sample(3)   # a callback that uses the random stream, as plotting samples does


@pytest.mark.slow   # three fits of four epochs each
@pytest.mark.parametrize("make_loss, callback", [
    (Trace_ELBO, None),
    # the resumed run traces again, on its first batch: that must not change the numbers
    (lambda: JitTrace_ELBO(ignore_jit_warnings=True), None),
    # on its first call a vectorized multi-particle ELBO runs model and guide once to find the plate depth
    (lambda: RenyiELBO(alpha=0, num_particles=3, vectorize_particles=True), None),
    (lambda: Trace_ELBO(num_particles=3, vectorize_particles=True), None),
    (Trace_ELBO, _draws_pictures),
    # the sync-free graph: traced at the first batch outside the run, and again for the last batch's shape
    ("compile", None),
], ids=["trace", "jit", "iwae", "trace-3-particles", "callback-draws", "compile"])
def test_resume_matches_uninterrupted_run(make_loss, callback, digits_binary, tmp_path):
    train, test = digits_binary
    options = dict(seed=1, progress=False, callback=callback, eval_samples=0, pictures=False)
    if make_loss == "compile":
        options.update(compile=True, beta=2.0, warmup=3)
    else:
        options.update(loss=make_loss())
    pyro.set_rng_seed(1)
    straight = small_vae(prior=priors.MixtureOfGaussians(3))
    full = pv.fit(straight, train, test=test, epochs=4, checkpoint_dir=tmp_path / "a", **options)

    if "loss" in options:
        options["loss"] = make_loss()
    pyro.set_rng_seed(1)
    resumed = small_vae(prior=priors.MixtureOfGaussians(3))
    pv.fit(resumed, train, test=test, epochs=2, checkpoint_dir=tmp_path / "b", **options)
    again = small_vae(prior=priors.MixtureOfGaussians(3))   # a fresh process would start from scratch too
    if "loss" in options:
        options["loss"] = make_loss()
    history = pv.fit(again, train, test=test, epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **options)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["train_elbo"] for h in history] == [h["train_elbo"] for h in full]
    assert [h["test_elbo"] for h in history] == [h["test_elbo"] for h in full]
    ref = _weights(straight)
    assert all(torch.equal(ref[k], v) for k, v in _weights(again).items())


@pytest.mark.parametrize("weights", [{}, {"beta": 2.0, "warmup": 2}], ids=["plain", "warmup"])
def test_compiled_step_trains_like_the_default(weights, digits_binary):
    train, test = digits_binary
    runs = []
    for compile in (False, True):
        pyro.set_rng_seed(4)
        vae = small_vae()
        history = pv.fit(vae, train, test=test, epochs=3, seed=4, progress=False, compile=compile, **weights)
        runs.append(([h["train_elbo"] for h in history], [h["test_elbo"] for h in history], _weights(vae)))
    (eager_train, eager_test, eager_w), (fast_train, fast_test, fast_w) = runs
    # the same estimator with the same draws: equal up to float rounding of the sums
    assert fast_train == pytest.approx(eager_train, rel=1e-5) and fast_test == pytest.approx(eager_test, rel=1e-5)
    assert all(torch.allclose(eager_w[k], fast_w[k], atol=1e-5) for k in eager_w)
    assert fast_train[-1] > fast_train[0]


def test_compile_refuses_other_estimators(digits_binary):
    for loss, match in [(TraceMeanField_ELBO(), "Trace_ELBO's estimator"), (RenyiELBO(alpha=0), "RenyiELBO")]:
        with pytest.raises(pv.ConfigError, match=match):
            pv.fit(small_vae(), digits_binary[0], epochs=1, progress=False, compile=True, loss=loss)
    with pytest.raises(pv.ConfigError, match="compile must be"):
        pv.fit(small_vae(), digits_binary[0], epochs=1, progress=False, compile="fastest")


def test_checkpoint_is_plain_data_and_load_run_restores_outputs(digits_binary, tmp_path):
    vae = small_vae(likelihood=likelihoods.Bernoulli())
    pv.fit(vae, digits_binary[0], test=digits_binary[1], epochs=2, progress=False, checkpoint_dir=tmp_path,
           eval_samples=10)
    # the run folder pyro-vae train writes: scores and pictures too
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == [
        "checkpoint.pt", "config.json", "curves.png", "interpolation.png", "latent_scatter.png", "metrics.json",
        "reconstructions.png", "samples.png", "traversal.png"]
    metrics = checkpoint.load_json(tmp_path / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["test"]["num_samples"] == 10
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)   # no pickled objects inside
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["config"] == vae.config
    loaded, config, _ = pv.load_run(str(tmp_path))
    assert config["vae"] == vae.config and config["fit"]["epochs"] == 2
    x, _ = next(digits_binary[1].batches(16, shuffle=False))
    vae.eval()
    with torch.no_grad():
        assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))
        z = torch.randn(5, 4)
        assert torch.equal(loaded.generate(z), vae.generate(z))
        assert torch.equal(loaded.encode(x)[1], vae.encode(x)[1])
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))
    # readable like any other new file (the temporary files are created private)
    umask = os.umask(0)
    os.umask(umask)
    assert all(os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask for name in ("checkpoint.pt", "config.json"))


def test_existing_run_folder_is_refused(digits_binary, tmp_path):
    pv.fit(small_vae(), digits_binary[0], epochs=1, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(pv.CheckpointError, match="already holds a run"):
        pv.fit(small_vae(), digits_binary[0], epochs=1, progress=False, checkpoint_dir=tmp_path)
    pv.fit(small_vae(), digits_binary[0], epochs=1, progress=False, checkpoint_dir=tmp_path, overwrite=True)
    with pytest.raises(pv.CheckpointError, match="different model"):
        pv.fit(small_vae(latent_dim=5), digits_binary[0], epochs=2, progress=False, checkpoint_dir=tmp_path,
               resume=True)


def test_resume_refuses_other_settings_and_a_folder_without_checkpoint(digits_binary, tmp_path):
    train = digits_binary[0]
    run_info = {"data": {"dataset": "digits", "binarize": "dynamic"}, "cli": ["train", "--epochs", "1"]}
    pv.fit(small_vae(), train, epochs=1, progress=False, checkpoint_dir=tmp_path, run_info=run_info)
    # another batch size would silently make a different run of the rest
    with pytest.raises(pv.CheckpointError, match=r"other settings \(batch_size: saved 128, now 64\)"):
        pv.fit(small_vae(), train, epochs=2, batch_size=64, progress=False, checkpoint_dir=tmp_path, resume=True,
               run_info=run_info)
    other_data = {**run_info, "data": {"dataset": "digits", "binarize": "static"}}
    with pytest.raises(pv.CheckpointError, match="other settings.*data"):
        pv.fit(small_vae(), train, epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True,
               run_info=other_data)
    # more epochs and another command line are what resuming is for
    history = pv.fit(small_vae(), train, epochs=2, progress=False, checkpoint_dir=tmp_path, resume=True,
                     run_info={**run_info, "cli": ["train", "--epochs", "2", "--resume"]})
    assert [h["epoch"] for h in history] == [1, 2]
    with pytest.raises(pv.CheckpointError, match="nothing to resume"):
        pv.fit(small_vae(), train, epochs=2, progress=False, checkpoint_dir=tmp_path / "typo", resume=True)
    with pytest.raises(pv.CheckpointError, match="already trained 2 epochs.*at least 2"):
        pv.fit(small_vae(), train, epochs=1, progress=False, checkpoint_dir=tmp_path, resume=True,
               run_info=run_info)
    assert checkpoint.load_json(tmp_path / "config.json")["fit"]["epochs"] == 2


def test_resume_with_a_lower_learning_rate_or_clipping_is_recorded(digits_binary, tmp_path):
    # the advice after a divergence: resume with a smaller learning rate or with clipping
    train = digits_binary[0]
    pv.fit(small_vae(), train, epochs=1, progress=False, checkpoint_dir=tmp_path, eval_samples=0, pictures=False)
    vae = small_vae()
    seen = []
    pv.fit(vae, train, epochs=3, lr=1e-4, clip_norm=5.0, progress=False, checkpoint_dir=tmp_path, resume=True,
           eval_samples=0, pictures=False, callback=lambda v, r: seen.append(None))
    config = checkpoint.load_json(tmp_path / "config.json")
    assert config["fit"]["lr"] == 1e-4 and config["fit"]["clip_norm"] == 5.0
    assert config["changes"] == [{"setting": "lr", "saved": 0.001, "now": 0.0001, "from_epoch": 2},
                                 {"setting": "clip_norm", "saved": None, "now": 5.0, "from_epoch": 2}]
    state = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-4]   # the optimizer really took it
    assert len(seen) == 2
    # a later resume without changes keeps the record
    pv.fit(small_vae(), train, epochs=4, lr=1e-4, clip_norm=5.0, progress=False, checkpoint_dir=tmp_path,
           resume=True, eval_samples=0, pictures=False)
    assert len(checkpoint.load_json(tmp_path / "config.json")["changes"]) == 2


def test_resume_refuses_a_cosine_schedule_over_other_epochs(digits_binary, tmp_path):
    # the decay is over the first run's epochs: more of them would climb back up from 0
    train = digits_binary[0]
    options = dict(progress=False, eval_samples=0, pictures=False)

    def cosine(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)

    pv.fit(small_vae(), train, epochs=2, scheduler=cosine, checkpoint_dir=tmp_path / "a", **options)
    config = (tmp_path / "a" / "config.json").read_bytes()
    with pytest.raises(pv.ConfigError, match=r"^the run in .* follows a cosine learning-rate schedule, which decays "
                                             r"over the run's epochs \(2\); resume with epochs=2 \(--epochs 2\)"):
        pv.fit(small_vae(), train, epochs=4, scheduler=cosine, checkpoint_dir=tmp_path / "a", resume=True, **options)
    assert (tmp_path / "a" / "config.json").read_bytes() == config   # refused before anything was written
    history = pv.fit(small_vae(), train, epochs=2, scheduler=cosine, checkpoint_dir=tmp_path / "a", resume=True,
                     **options)
    assert [h["epoch"] for h in history] == [1, 2]
    # a schedule named "cosine", as pyro-vae train names its own, is one whatever it builds
    named = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    named.name = "cosine"
    pv.fit(small_vae(), train, epochs=1, scheduler=named, checkpoint_dir=tmp_path / "b", **options)
    with pytest.raises(pv.ConfigError, match="cosine"):
        pv.fit(small_vae(), train, epochs=2, scheduler=named, checkpoint_dir=tmp_path / "b", resume=True, **options)
    # a cosine schedule over more epochs than the first run's goes on, and so do other schedules
    def longer(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)

    pv.fit(small_vae(), train, epochs=1, scheduler=longer, checkpoint_dir=tmp_path / "d", **options)
    history = pv.fit(small_vae(), train, epochs=4, scheduler=longer, checkpoint_dir=tmp_path / "d", resume=True,
                     **options)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]

    def steps(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1)

    pv.fit(small_vae(), train, epochs=1, scheduler=steps, checkpoint_dir=tmp_path / "c", **options)
    history = pv.fit(small_vae(), train, epochs=2, scheduler=steps, checkpoint_dir=tmp_path / "c", resume=True,
                     **options)
    assert [h["epoch"] for h in history] == [1, 2]


def test_overwrite_removes_the_old_run_before_training(digits_binary, tmp_path):
    pv.fit(small_vae(), digits_binary[0], epochs=2, progress=False, checkpoint_dir=tmp_path)
    (tmp_path / "metrics.json").write_text("{}")   # as pyro-vae train leaves it
    decoder = FaultyDecoder()
    decoder.broken = True
    with pytest.raises(pv.TrainingError, match="epoch 1, step 1"):
        pv.fit(small_vae(decoder=decoder), digits_binary[0], epochs=2, lr=0.01, progress=False,
               checkpoint_dir=tmp_path, overwrite=True)
    # the failed new run leaves its own config.json only: no old checkpoint to be resumed as if it were new
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "metrics.json").exists()
    assert checkpoint.load_json(tmp_path / "config.json")["fit"]["lr"] == 0.01
    with pytest.raises(pv.CheckpointError, match="nothing to resume"):
        pv.fit(small_vae(), digits_binary[0], epochs=2, lr=0.01, progress=False, checkpoint_dir=tmp_path,
               resume=True)


class PoisonedAdam(torch.optim.Adam):
    """Adam whose ``poison_at``-th step writes NaN into the weights: the loss before that step was finite."""

    def __init__(self, params, lr, poison_at):
        super().__init__(params, lr=lr)
        self.steps, self.poison_at = 0, poison_at

    def step(self, closure=None):
        super().step(closure)
        self.steps += 1
        if self.steps == self.poison_at:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.nan)


def test_weights_broken_by_the_last_step_of_an_epoch_are_not_checkpointed(digits_binary, tmp_path):
    train = digits_binary[0]
    steps = train.num_batches(128)
    def optimizer(params, lr):
        return PoisonedAdam(params, lr, poison_at=2 * steps)   # last step of epoch 2

    with pytest.raises(pv.TrainingError, match="weights became NaN or infinite in epoch 2; the checkpoint of epoch 1"):
        pv.fit(small_vae(), train, epochs=3, progress=False, checkpoint_dir=tmp_path, optimizer=optimizer)
    state = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


class FaultyDecoder(nn.Module):
    """A decoder that starts returning NaN once ``broken`` is set."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 64)
        self.broken = False

    def forward(self, z):
        out = self.lin(z).unflatten(-1, (1, 8, 8))
        return out * math.nan if self.broken else out


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(digits_binary, tmp_path):
    decoder = FaultyDecoder()
    vae = small_vae(decoder=decoder)

    def break_after_first_epoch(vae, record):
        decoder.broken = True

    with pytest.raises(pv.TrainingError, match=r"epoch 2, step 1;.*checkpoint of epoch 1 is kept.*lower the learning"):
        pv.fit(vae, digits_binary[0], epochs=3, progress=False, checkpoint_dir=tmp_path,
               callback=break_after_first_epoch)
    state = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_callback_can_stop(digits_binary):
    history = pv.fit(small_vae(), digits_binary[0], epochs=5, progress=False,
                     callback=lambda vae, record: record["epoch"] == 2)
    assert len(history) == 2


class GradientNorms(pv.hooks.Hook):
    """Records the norm of all gradients after every step (they are kept until the next step zeroes them)."""

    def __init__(self):
        self.norms = []

    def on_step_end(self, trainer):
        grads = [p.grad for p in trainer.parameters if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_clip_norm_clips_every_step(digits_binary):
    train = digits_binary[0].subset(range(512))
    free, clipped = GradientNorms(), GradientNorms()
    pv.fit(small_vae(), train, epochs=2, progress=False, hooks=[free])
    pv.fit(small_vae(), train, epochs=2, progress=False, clip_norm=1.0, hooks=[clipped])
    assert len(clipped.norms) == 2 * train.num_batches(128)
    assert max(free.norms) > 10.0   # unclipped, these gradients are large ...
    assert max(clipped.norms) <= 1.0 + 1e-4 and min(clipped.norms) > 0.99   # ... and clipping bounds every one


@pytest.mark.parametrize("loss", [Trace_ELBO(), TraceMeanField_ELBO(),
                                  RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True)],
                         ids=["trace", "meanfield", "iwae"])
@pytest.mark.parametrize("prior", ["standard", "mog"])
def test_any_pyro_elbo_trains(loss, prior, digits_binary):
    vae = small_vae(prior=priors.StandardNormal() if prior == "standard" else priors.MixtureOfGaussians(3))
    history = pv.fit(vae, digits_binary[0], test=digits_binary[1], epochs=2, loss=loss, progress=False)
    assert all(math.isfinite(h["train_elbo"]) and math.isfinite(h["test_elbo"]) for h in history)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


class AlwaysRegisters(pv.VAE):
    """Registers with pyro.module on every call, as a user's own model/guide would."""

    def register(self):
        pyro.module("vae", self)


@pytest.mark.parametrize("make_loss", [Trace_ELBO, lambda: RenyiELBO(alpha=0, num_particles=3),
                                       lambda: JitTrace_ELBO(ignore_jit_warnings=True)],
                         ids=["trace", "iwae", "jit"])
def test_skipping_param_store_registration_changes_nothing(make_loss, digits_binary):
    # fit leaves pyro.module out where its ELBO does not need param sites; training must be the same
    runs = []
    for cls in (pv.VAE, AlwaysRegisters):
        pyro.set_rng_seed(5)
        vae = cls(image_shape=(1, 8, 8), latent_dim=4, hidden=(32,))
        # Pyro's own ELBO: the replay step fit picks for Trace_ELBO by default never reaches pyro.module
        history = pv.fit(vae, digits_binary[0], epochs=2, seed=5, loss=make_loss(), progress=False, compile=False)
        runs.append((history, _weights(vae), set(pyro.get_param_store().keys())))
        assert vae.register_params   # switched back on after fit
    (h0, w0, keys0), (h1, w1, keys1) = runs
    assert [h["train_elbo"] for h in h0] == pytest.approx([h["train_elbo"] for h in h1], abs=1e-3)
    assert all(torch.allclose(w0[k], w1[k], atol=1e-5) for k in w0)
    assert keys1   # the always-registering model did register ...
    assert bool(keys0) == (make_loss is not Trace_ELBO)   # ... and plain Trace_ELBO skipped it
    assert h0[-1]["train_elbo"] > h0[0]["train_elbo"]   # and it learned


def test_jit_elbo_matches_eager_on_a_batch_of_another_size(digits_binary):
    # JitTrace_ELBO traces once, on the first batch, and replays that graph for every later batch: on
    # a batch of another size (fit's last batch) it must estimate the same ELBO as eager Trace_ELBO
    vae = small_vae()
    images = digits_binary[0].images
    jit = JitTrace_ELBO(ignore_jit_warnings=True)
    with torch.no_grad():
        jit.differentiable_loss(vae.model, vae.guide, images[:64])        # traced at 64
        draws = {name: torch.tensor([elbo.differentiable_loss(vae.model, vae.guide, images[64:80]).item()
                                     for _ in range(300)])
                 for name, elbo in [("jit", jit), ("eager", Trace_ELBO())]}
    se = math.sqrt(sum(d.var().item() / len(d) for d in draws.values()))
    assert abs(draws["jit"].mean() - draws["eager"].mean()) < 5 * se
    assert draws["jit"].std() > 0   # really sampled, not a frozen draw


def test_jit_elbo_trains_on_images_without_labels(digits_binary):
    # the batches of unlabelled data carry y=None, which a torch.jit graph cannot take as an input
    unlabelled = pv.data.from_tensor(digits_binary[0].images[:200], binarize="static")
    assert unlabelled.labels is None
    history = pv.fit(small_vae(), unlabelled, epochs=2, loss=JitTrace_ELBO(ignore_jit_warnings=True), progress=False)
    assert all(math.isfinite(h["train_elbo"]) for h in history)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


def test_one_jit_elbo_instance_trains_two_vaes(digits_binary):
    # a Pyro JIT ELBO keeps its compiled function as a closure over the first model it was called with;
    # reused by a second fit with another VAE, it would run the first VAE's program, so the second VAE would
    # get no gradients and stay as initialised while fit reported the first one's ELBO
    train = digits_binary[0].subset(range(400))
    elbo = JitTrace_ELBO(ignore_jit_warnings=True)
    pv.fit(small_vae(), train, epochs=2, loss=elbo, progress=False)
    second_vae = small_vae()
    initial = [p.detach().clone() for p in second_vae.parameters()]
    pv.fit(second_vae, train, epochs=2, loss=elbo, progress=False)
    assert all(not torch.equal(a, b) for a, b in zip(initial, second_vae.parameters()))   # every weight moved
    # fit compiled into a copy: the caller's instance holds no graph of either VAE
    assert not any(isinstance(v, pyro.ops.jit.CompiledFunction) for v in vars(elbo).values())


def test_bad_arguments_and_data(digits_binary, digits_grey, mnist5k, tmp_path):
    train = digits_binary[0]
    for kwargs, match in [(dict(epochs=0), "epochs"), (dict(batch_size=-3), "batch_size"),
                          (dict(lr=0.0), "lr"), (dict(epochs=1.5), "epochs"),
                          (dict(resume=True), "checkpoint_dir"), (dict(device="tpu9"), "device"),
                          (dict(beta=0.0), "beta must be a positive"), (dict(seed=-1), "seed must be"),
                          (dict(resume=True, overwrite=True, checkpoint_dir=tmp_path), "pass only one"),
                          (dict(loss=JitTrace_ELBO(), warmup=3), "warmup would be ignored"),
                          (dict(loss=JitTrace_ELBO(), beta=2.0), "use Trace_ELBO")]:
        with pytest.raises(pv.ConfigError, match=match):
            pv.fit(small_vae(), train, progress=False, **kwargs)
    with pytest.raises(pv.DataError, match="binarize.*ContinuousBernoulli"):
        pv.fit(small_vae(), digits_grey[0], epochs=1, progress=False)
    with pytest.raises(pv.DataError, match=r"shape \(1, 28, 28\).*\(1, 8, 8\)"):
        pv.fit(small_vae(), mnist5k[0], epochs=1, progress=False)
    with pytest.raises(pv.DataError, match=r"\[0, 1\]"):
        pv.fit(small_vae(likelihood=likelihoods.ContinuousBernoulli()),
               _shifted(digits_grey[0]),
               epochs=1, progress=False)


def _shifted(data):
    """A dataset whose pixels leave [0, 1], built past the constructor's own check."""
    shifted = data.subset(range(20))
    shifted.images = shifted.images * 2.0
    return shifted


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error(digits_binary):
    with pytest.raises(pv.ConfigError, match="no GPU"):
        pv.fit(small_vae(), digits_binary[0], epochs=1, device="cuda", progress=False)


@pytest.mark.cuda
def test_cuda_training_and_evaluation(mnist5k, tmp_path):
    train, test = mnist5k
    vae = pv.VAE(latent_dim=8)
    history = pv.fit(vae, train, test=test, epochs=2, device="cuda", progress=False)
    # resuming on the GPU: the checkpoint's RNG states must be restored from the CPU
    pv.fit(pv.VAE(latent_dim=8), train, epochs=1, device="cuda", progress=False, checkpoint_dir=tmp_path)
    resumed = pv.fit(pv.VAE(latent_dim=8), train, epochs=2, device="cuda", progress=False, checkpoint_dir=tmp_path,
                     resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert vae.device.type == "cuda" and math.isfinite(history[-1]["test_elbo"])
    log_px = pv.evaluate.log_likelihood(vae, test.to("cuda"), num_samples=100)
    assert log_px > history[-1]["test_elbo"] - 1.0
    # the compiled ELBO on the GPU, including the tracing under a forked CUDA random state
    jit_vae = pv.VAE(latent_dim=8)
    jit_history = pv.fit(jit_vae, train, epochs=2, device="cuda", progress=False,
                         loss=JitTrace_ELBO(ignore_jit_warnings=True))
    assert math.isfinite(jit_history[-1]["train_elbo"])
    assert jit_history[-1]["train_elbo"] > jit_history[0]["train_elbo"]
