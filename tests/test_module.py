import math

import lightning as L
import pytest
import torch

from cfglab.data.digits import DigitsDataModule
from cfglab.images import to_model_range
from cfglab.diffusion.weighting import stratified_times
from cfglab.lightning.module import drop_labels
from helpers import sample_module, small_module


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_drop_labels_rate(p):
    n = 200_000
    labels = torch.randint(0, 10, (n,))
    out = drop_labels(labels, p, null_label=10, generator=torch.Generator().manual_seed(1))
    dropped = out == 10
    assert (out[~dropped] == labels[~dropped]).all()  # kept labels are untouched
    assert abs(dropped.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n)


class LabelSpy(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []
        self.in_channels, self.image_size = net.in_channels, net.image_size

    def forward(self, x, t, labels):
        self.seen.append(labels.clone())
        return self.net(x, t, labels)


def test_training_step_drops_labels_at_p_uncond():
    module = small_module(p_uncond=0.2)
    module.net = LabelSpy(module.net)
    module.log = lambda *a, **k: None
    x, y = torch.randn(500, 1, 8, 8), torch.randint(0, 10, (500,))
    for _ in range(20):
        module.training_step((x, y), 0)
    seen = torch.cat(module.net.seen)
    n = seen.numel()
    assert abs((seen == 10).float().mean().item() - 0.2) <= 5 * math.sqrt(0.2 * 0.8 / n)


def test_stratified_times_cover_every_stratum():
    t = stratified_times(64, torch.Generator().manual_seed(0))
    assert ((t >= 0) & (t < 1)).all()
    assert sorted((t * 64).floor().long().tolist()) == list(range(64))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["eps", "v"])
def test_short_training_lowers_the_loss(target, tmp_path):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    module = small_module(target=target, lr=2e-3, warmup_steps=10)
    x, y = dm.items("val").head()
    x = to_model_range(x, 8)

    def fixed_loss():
        with torch.no_grad():
            return module.loss(x, y, torch.Generator().manual_seed(0)).item()

    before = fixed_loss()
    trainer = L.Trainer(max_steps=150, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    after = fixed_loss()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("bad, match", [(dict(p_uncond=1.5), "p_uncond=1.5"), (dict(target="score"), "'score'"),
                                         (dict(lr=0), "lr=0"), (dict(p_uncond=-0.1), "p_uncond=-0.1")])
def test_bad_hyperparameters(bad, match):
    with pytest.raises(ValueError, match=match):
        small_module(**bad)


def test_a_linear_learning_rate_warms_up_then_falls_to_zero_at_max_steps(tmp_path):
    """The rate each optimizer step used: (k + 1) / W over the warm-up, then lr (N - k) / (N - W) at step k, so
    that it would reach 0 at N = trainer.max_steps; constant after the warm-up otherwise."""
    seen = {}

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(pl_module.lr_schedule, []).append(trainer.optimizers[0].param_groups[0]["lr"])

    lr, warmup, steps = 1e-3, 4, 20
    for schedule in ("linear", "constant"):
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[Rates()], default_root_dir=tmp_path)
        trainer.fit(small_module(lr=lr, warmup_steps=warmup, lr_schedule=schedule),
                    datamodule=DigitsDataModule(batch_size=32))
    warm = [lr * (k + 1) / warmup for k in range(warmup)]
    assert seen["linear"] == pytest.approx(warm + [lr * (steps - k) / (steps - warmup) for k in range(warmup, steps)])
    assert seen["constant"] == pytest.approx(warm + [lr] * (steps - warmup))
    with pytest.raises(ValueError, match="lr_schedule='cosine' is not one of"):
        small_module(lr_schedule="cosine")


def test_ema_weights_are_sampled_and_checkpointed(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cfglab.lightning.ema import EMA

    L.seed_everything(0)
    module = small_module(lr=2e-3, warmup_steps=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    ema = EMA(decay=0.9)
    trainer = L.Trainer(max_steps=30, accelerator="cpu", logger=False, callbacks=[ema, ckpt],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    averaged = ema._average_model.module.state_dict()
    name = "net.out.2.weight"
    torch.testing.assert_close(state["state_dict"][name], averaged[name])
    # the final checkpoint keeps the trained weights apart from the EMA weights, so a resume continues correctly
    assert not torch.equal(state["current_model_state"][name], averaged[name])
    # after fit the module holds the EMA weights, so sampling uses them
    torch.testing.assert_close(module.state_dict()[name], averaged[name])


def test_ema_update_matches_torch_and_pickles():
    import pickle

    from torch.optim.swa_utils import get_ema_avg_fn

    from cfglab.lightning.ema import EMA, EMAUpdate

    ema, current = [torch.randn(5), torch.randn(2, 3)], [torch.randn(5), torch.randn(2, 3)]
    expected = [get_ema_avg_fn(0.9)(e, c, 3) for e, c in zip(ema, current)]
    EMAUpdate(0.9)(ema, current, 3)  # in place, all parameters at once
    for e, x in zip(ema, expected):
        torch.testing.assert_close(e, x)
    pickle.loads(pickle.dumps(EMA(decay=0.99)))  # processes started by spawn receive the callback pickled
    with pytest.raises(ValueError, match="decay=1.5"):
        EMA(decay=1.5)


def test_one_batched_forward_and_two_forwards_give_the_same_samples():
    from cfglab.diffusion.guidance import CFG
    from cfglab.diffusion.samplers import DDIM

    module = small_module()
    a, b = (sample_module(module, torch.arange(4), DDIM(steps=3), CFG(), 2.0, torch.Generator().manual_seed(0),
                          batched=batched) for batched in (True, False))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0)
    module = small_module(lr=1e-3, warmup_steps=1)
    original = module.loss

    def poisoned(x0, labels, generator=None):
        loss = original(x0, labels, generator)
        return loss * float("nan") if module.global_step >= 8 else loss

    module.loss = poisoned
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at step 8"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    last = torch.load(sorted(tmp_path.glob("*step=8.ckpt"))[0], weights_only=True)
    assert last["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the poisoned step never updated the weights


@pytest.mark.slow
def test_bf16_autocast_training_and_sampling_stay_finite_and_close_to_float32():
    from cfglab.diffusion.guidance import CFG
    from cfglab.diffusion.samplers import DDIM, DPMSolverPP2M

    L.seed_everything(0)
    module = small_module(lr=2e-3, warmup_steps=20)
    trainer = L.Trainer(max_steps=100, accelerator="cpu", precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))  # a non-finite loss would raise
    assert all(torch.isfinite(p).all() for p in module.parameters())
    labels = torch.arange(10).repeat(10)
    for sampler in (DDIM(steps=20), DPMSolverPP2M(steps=20)):
        for w in (0.0, 4.0):
            out = {}
            for precision, autocast in (("32-true", None), ("bf16-mixed", torch.bfloat16)):
                out[precision] = sample_module(module, labels, sampler, CFG(), w, torch.Generator().manual_seed(0),
                                               autocast=autocast)
            assert torch.isfinite(out["bf16-mixed"]).all()
            gap = (out["bf16-mixed"] - out["32-true"]).abs().mean().item()
            print(f"{sampler!r} w={w}: mean |bf16 - fp32| = {gap:.4f}")
            assert gap < 0.03  # data range [-1, 1]; measured 0.003-0.007


@pytest.mark.slow
def test_compiled_network_trains_and_keeps_checkpoint_keys(tmp_path):
    L.seed_everything(0)
    module = small_module(compile=True)
    keys = set(module.state_dict())
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert set(module.state_dict()) == keys  # in-place compile: checkpoints load into uncompiled modules
    assert getattr(module.net, "_compiled_call_impl", None) is not None
