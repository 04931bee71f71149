"""Base training and flexify on a tiny model and real Fashion-MNIST images (CPU, a few seconds each).

What is replaced to stay fast: the model (depth 1, width 32 instead of dit_fmnist's 7 × 192), the data
(the first 256 training images), the batch (16) and the step counts (tens instead of thousands).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flexidit_trt.cli import main
from flexidit_trt.diffusion import make_sampler, plan
from flexidit_trt.model import CheckpointError, FlexiDiT, get_config, load_checkpoint
from flexidit_trt.model.dit import is_base_key
from flexidit_trt.model.macs import forward_macs
from flexidit_trt.training import flexify as flexify_module
from flexidit_trt.training.data import DataError
from flexidit_trt.training.flexify import FlexifyOptions, flexify, weak_timestep_ranges
from flexidit_trt.training.loop import TrainError
from flexidit_trt.training.train import STATE_NAME, TrainOptions, train

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "flexidit_trt" / "weights" / "default.safetensors"
TINY = dict(depth=1, hidden_size=32, num_heads=2, subset=256, batch_size=16, warmup_steps=0, progress=False)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """30 steps of the tiny model at lr 3e-3 (seed 0), logged every 10 steps."""
    out = tmp_path_factory.mktemp("run") / "base"
    return train(TrainOptions(out=out, steps=30, lr=3e-3, log_every=10, **TINY))


def test_training_loss_decreases(trained):
    """Mean loss of steps 21-30 vs steps 1-10: measured 0.29-0.31 of it over seeds 0-3; asserted < 0.45."""
    first, last = trained.losses[0], trained.losses[-1]
    assert [e["step"] for e in trained.losses] == [10, 20, 30]
    assert last["loss"] < 0.45 * first["loss"]
    assert last["mse"] < first["mse"]
    assert all(e["vb"] > 0 for e in trained.losses)  # the variance term is trained too
    assert trained.stopped_by == "steps" and trained.step == 30


def test_training_writes_a_loadable_base_checkpoint(trained):
    model = load_checkpoint(trained.checkpoint)  # a base-only file: weak sizes derived by resize
    cfg = model.config
    assert (cfg.in_channels, cfg.num_classes, cfg.input_size, cfg.patch_sizes) == (1, 10, 32, (2, 4))
    assert cfg.learn_sigma and cfg.num_embeddings == 11  # 10 classes + the null class
    x = torch.randn(2, 1, 32, 32)
    out = model(x, torch.tensor([10, 900]), torch.tensor([3, 10]))
    assert out.shape == (2, 2, 32, 32) and torch.isfinite(out).all()
    # The EMA differs from the live weights (decay ramped up from 0.1, so it moved) and both differ from init.
    state = torch.load(trained.checkpoint.parent / STATE_NAME, weights_only=True)
    key = "blocks.0.mlp.fc1.weight"
    assert not torch.equal(state["ema"][key], state["model"][key])


def test_resume_continues_exactly(data_dir, tmp_path):
    """3 steps, stop, resume to 6 == 6 steps at once: model, EMA, optimizer state and losses bit-identical."""
    options = dict(steps=6, lr=3e-3, log_every=1, checkpoint_every=3, **TINY)
    whole = tmp_path / "whole"
    train(TrainOptions(out=whole, **options))
    parts = tmp_path / "parts"
    train(TrainOptions(out=parts, **{**options, "steps": 3}))
    resumed = train(TrainOptions(out=parts, resume=True, **options))
    assert resumed.step == 6
    a = torch.load(whole / STATE_NAME, weights_only=True)
    b = torch.load(parts / STATE_NAME, weights_only=True)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    for sa, sb in zip(a["opt"]["state"].values(), b["opt"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [(e["step"], e["loss"]) for e in a["losses"]] == [(e["step"], e["loss"]) for e in b["losses"]]


def test_time_box_stops_and_logs_the_partial_interval(data_dir, tmp_path):
    result = train(TrainOptions(out=tmp_path / "r", minutes=0.0005, steps=1000, log_every=1000, **TINY))
    assert result.stopped_by == "minutes" and 1 <= result.step < 1000
    assert [e["step"] for e in result.losses] == [result.step]  # the unfinished interval is logged too
    assert load_checkpoint(result.checkpoint).config.in_channels == 1


def test_run_folder_errors(data_dir, tmp_path, trained):
    with pytest.raises(TrainError, match="already holds a training run .* --resume"):
        train(TrainOptions(out=trained.checkpoint.parent, steps=31, lr=3e-3, **TINY))
    with pytest.raises(TrainError, match="no training state"):
        train(TrainOptions(out=tmp_path / "empty", resume=True, **TINY))
    with pytest.raises(TrainError, match="lr: run has 0.003, options say 0.001"):
        train(TrainOptions(out=trained.checkpoint.parent, steps=31, lr=1e-3, resume=True, **TINY))


def test_init_starts_from_the_given_weights(data_dir, tmp_path, trained):
    """--init: step 0's model and EMA are the given EMA weights, so one step at lr ~0 changes nothing
    measurable; a run with another shape is refused, naming both."""
    tiny_lr = dict(TINY, lr=1e-12)
    run = train(TrainOptions(out=tmp_path / "init", steps=1, init=trained.checkpoint, **tiny_lr))
    given = load_checkpoint(trained.checkpoint).state_dict()
    got = load_checkpoint(run.checkpoint).state_dict()
    key = "blocks.0.mlp.fc1.weight"
    # One EMA update at decay 0.1 toward weights that moved by lr ~1e-12: equal to fp32 rounding.
    torch.testing.assert_close(got[key], given[key], rtol=1e-6, atol=1e-7)
    fresh = train(TrainOptions(out=tmp_path / "fresh", steps=1, **tiny_lr))
    assert not torch.allclose(load_checkpoint(fresh.checkpoint).state_dict()[key], given[key])
    with pytest.raises(TrainError, match="its model \\(1 blocks of width 32.*\\(1 blocks of width 48"):
        train(TrainOptions(out=tmp_path / "wide", init=trained.checkpoint, **{**TINY, "hidden_size": 48}))
    # Heads change no weight's shape, only what the weights mean: refused too, with what to pass.
    with pytest.raises(TrainError, match="2 heads.*4 heads.*pass --depth 1 --hidden-size 32 --num-heads 2"):
        train(TrainOptions(out=tmp_path / "heads", init=trained.checkpoint, **{**TINY, "num_heads": 4}))
    with pytest.raises(TrainError, match="pick one"):
        train(TrainOptions(out=tmp_path / "both", init=trained.checkpoint, resume=True, **TINY))


def test_cosine_decay_schedule(tmp_path):
    opts = TrainOptions(out=tmp_path, steps=110, warmup_steps=10, lr=1.0, lr_decay="cosine")
    assert opts.lr_at(0) == pytest.approx(0.1)  # warm-up
    assert opts.lr_at(10) == pytest.approx(1.0)
    assert opts.lr_at(60) == pytest.approx(0.5)  # half-way through the decay
    assert opts.lr_at(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert TrainOptions(out=tmp_path, steps=110, warmup_steps=10, lr=1.0).lr_at(109) == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr_decay": "linear"}, "lr decay must be one of none, cosine"),
        ({"init": Path("/nowhere/base.safetensors")}, "--init /nowhere/base.safetensors: no such file"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"class_dropout": 0.0}, r"class dropout must be in \(0, 1\)"),
        ({"ema_decay": 1.0}, r"EMA decay must be in \[0, 1\)"),
        ({"batch_size": 0}, "batch size must be >= 1"),
        ({"minutes": -1.0}, "minutes must be > 0"),
        ({"num_heads": 5}, "not divisible by num_heads 5"),
        ({"config": "dit_huge"}, "unknown model config"),
        ({"config": "dit_s"}, "config dit_s takes 4 channels at 32×32 and 1000 classes; Fashion-MNIST is"),
    ],
)
def test_bad_train_options(tmp_path, change, message):
    with pytest.raises(TrainError, match=message):
        train(TrainOptions(out=tmp_path / "r", **{**TINY, **change}))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        train(TrainOptions(out=tmp_path / "r", data=tmp_path / "nowhere", **TINY))


# -- flexify ------------------------------------------------------------------------------------------------
FLEX = dict(
    steps=15, batch_size=16, subset=256, eval_images=64, lr=1e-2, lora_rank=2, log_every=5, progress=False
)


@pytest.fixture(scope="module")
def flexified(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("flex") / "flex.safetensors"
    return flexify(FlexifyOptions(checkpoint=trained.checkpoint, out=out, half=True, **FLEX))


def test_flexify_reduces_distillation_error(flexified):
    """Held-out student-teacher MSE at t in the weak range after 15 steps (peak lr 1e-2, cosine): measured
    0.871× (seed 0) and 0.866× (seed 1) of the projection's; asserted < 0.93×. The training loss falls too."""
    before, after = flexified.eval_before["p4"], flexified.eval_after["p4"]
    assert after["weak"] < 0.93 * before["weak"]
    assert flexified.losses[-1]["loss"] < flexified.losses[0]["loss"]
    assert flexified.steps == 15


def test_the_variance_half_of_the_loss_is_weighted_apart():
    """var_weight 1 is the whole output's MSE; 0 leaves the learned-variance channels out of the loss and
    its gradient; a model without learned variance ignores it. The held-out error reports the eps half."""
    cfg = get_config("dit_fmnist")
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 2 * cfg.in_channels, 8, 8, generator=gen)
    student = torch.randn(4, 2 * cfg.in_channels, 8, 8, generator=gen, requires_grad=True)
    whole = flexify_module._output_mse(student, teacher, cfg, 1.0)
    assert torch.equal(whole, torch.nn.functional.mse_loss(student, teacher))
    eps_only = flexify_module._output_mse(student, teacher, cfg, 0.0)
    squared = (student - teacher).square()
    torch.testing.assert_close(eps_only, squared[:, : cfg.in_channels].mean() / 2)
    eps_only.backward()
    assert (
        student.grad[:, cfg.in_channels :].abs().max() == 0
        and student.grad[:, : cfg.in_channels].abs().min() > 0
    )
    half = flexify_module._output_mse(student, teacher, cfg, 0.5)
    c = cfg.in_channels
    torch.testing.assert_close(half, (squared[:, :c].mean() + 0.5 * squared[:, c:].mean()) / 2)
    plain = cfg.replace(learn_sigma=False)
    torch.testing.assert_close(
        flexify_module._output_mse(student[:, :1], teacher[:, :1], plain, 0.0),
        torch.nn.functional.mse_loss(student[:, :1], teacher[:, :1]),
    )


def test_flexify_reports_the_noise_half_of_its_error(flexified):
    """The held-out error's eps half is the first in_channels' squared difference at the same inputs,
    recomputed here, not the variance half or the whole output's; and it fell in the run."""
    model = load_checkpoint(flexified.checkpoint).float().eval()
    x0, y = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(3)), torch.arange(6)
    lo, hi = 300, 900
    no_autocast = torch.autocast("cpu", enabled=False)
    errs = flexify_module.distillation_error(model, x0, y, {4: (lo, hi)}, 7, no_autocast)["p4"]
    gen = torch.Generator().manual_seed(7 + 12345)  # as distillation_error draws them
    t = torch.randint(lo, hi + 1, (6,), generator=gen)
    x_t = flexify_module.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
    with torch.no_grad():
        squared = (model(x_t, t, y, patch_size=4) - model(x_t, t, y, patch_size=2)).square()
    c = model.config.in_channels
    torch.testing.assert_close(errs["weak_eps"], squared[:, :c].mean().item(), rtol=1e-5, atol=0)
    torch.testing.assert_close(errs["weak"], squared.mean().item(), rtol=1e-5, atol=0)
    assert abs(errs["weak_eps"] - squared[:, c:].mean().item()) > 1e-3 * errs["weak"]
    assert flexified.eval_after["p4"]["weak_eps"] < flexified.eval_before["p4"]["weak_eps"]


def test_flexify_keeps_the_base_weights_bit_identical(trained, flexified):
    """Stored in fp16 (`half`, as the committed default): every base weight is the fp32 base's, rounded
    once, and the fixed sin-cos table stays exact fp32."""
    base = load_file(str(trained.checkpoint))
    flex = load_file(str(flexified.checkpoint))
    assert set(k for k in flex if is_base_key(k)) == set(base)
    for key, value in base.items():
        expected = value if key == "pos_embed" else value.half()
        assert flex[key].dtype == expected.dtype and torch.equal(flex[key], expected), key
    # The weak size's own parts did change: the embedding moved off the resize, adapters off zero.
    resized = load_checkpoint(trained.checkpoint)  # the weak size as the pinv resize gives it
    assert not torch.equal(flex["weak.p4.x_embedder.proj.weight"], resized.weak["p4"].x_embedder.proj.weight)
    ups = [v for k, v in flex.items() if ".lora.p4." in k and k.endswith("up.weight")]
    assert ups and all(v.abs().max() > 0 for v in ups)


def test_flexible_checkpoint_loads_and_static_matches(flexified):
    model = load_checkpoint(flexified.checkpoint).eval()
    assert model.config.patch_sizes == (2, 4) and model.config.lora_rank == 2
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([999, 500, 3]), torch.tensor([1, 10, 7])
    with torch.no_grad():
        for p in (2, 4):
            flexible = model(x, t, y, patch_size=p)
            static = model.static(p)(x, t, y)  # LoRA folded into the plain weights
            torch.testing.assert_close(static, flexible, rtol=1e-4, atol=1e-5)


def test_flexify_goes_on_from_a_flexible_checkpoint_of_the_same_base(trained, flexified, tmp_path):
    """--init: the weak parts start where the earlier flexify left them (its held-out error, not the
    projection's); another base, rank or set of sizes is refused by name."""
    out = tmp_path / "more.safetensors"
    more = flexify(FlexifyOptions(checkpoint=trained.checkpoint, init=flexified.checkpoint, out=out, **FLEX))
    start, earlier = more.eval_before["p4"]["weak"], flexified.eval_after["p4"]["weak"]
    assert abs(start - earlier) < 0.02 * earlier  # the earlier result, up to its fp16 storage
    assert start < 0.95 * flexified.eval_before["p4"]["weak"]  # not the projection
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    with safe_open(str(flexified.checkpoint), "pt") as f:
        earlier = f.metadata()
    # What it went on from is named, with that file's own steps and t ranges.
    assert meta["init"] == flexified.checkpoint.name
    assert json.loads(meta["init_record"]) == {
        "distill_steps": earlier["distill_steps"],
        "weak_t_ranges": earlier["weak_t_ranges"],
        "distill_var_weight": "1.0",
    }
    # A third pass without --lora-rank takes --init's rank (2 here, not the default 64), and its record
    # nests the one before.
    unranked = {k: v for k, v in FLEX.items() if k != "lora_rank"}
    third = tmp_path / "third.safetensors"
    flexify(FlexifyOptions(checkpoint=trained.checkpoint, init=out, out=third, **{**unranked, "steps": 1}))
    assert load_checkpoint(third).config.lora_rank == FLEX["lora_rank"] != flexify_module.DEFAULT_LORA_RANK
    with safe_open(str(third), "pt") as f:
        chain = json.loads(f.metadata()["init_record"])
    assert chain["init"] == flexified.checkpoint.name and chain["distill_steps"] == meta["distill_steps"]
    assert json.loads(chain["init_record"])["distill_steps"] == earlier["distill_steps"]
    # A new optimizer ramps its lr up over the first steps instead of undoing the adapters at once.
    fresh = FlexifyOptions(checkpoint=trained.checkpoint, out=out, **FLEX)
    going_on = FlexifyOptions(checkpoint=trained.checkpoint, init=out, out=out, **FLEX)
    assert flexify_module._cosine(0, fresh, 0.0) == 1.0
    assert flexify_module._cosine(0, going_on, 0.0) == pytest.approx(1 / flexify_module.INIT_WARMUP_STEPS)
    with pytest.raises(TrainError, match="another --lora-rank or --patch-sizes"):
        flexify(
            FlexifyOptions(
                checkpoint=trained.checkpoint, init=flexified.checkpoint, out=out, **{**FLEX, "lora_rank": 4}
            )
        )
    other = load_file(str(trained.checkpoint))
    other["final_layer.linear.bias"] = other["final_layer.linear.bias"] + 1.0
    with safe_open(str(trained.checkpoint), "pt") as f:
        save_file(other, str(tmp_path / "other.safetensors"), metadata=f.metadata())
    with pytest.raises(TrainError, match="was made from another base model"):
        flexify(
            FlexifyOptions(
                checkpoint=tmp_path / "other.safetensors", init=flexified.checkpoint, out=out, **FLEX
            )
        )
    # What --init cannot be: fewer adapters than it holds, a base checkpoint, a file that is no checkpoint.
    unranked = {k: v for k, v in FLEX.items() if k != "lora_rank"}
    refused = [
        ({"init": flexified.checkpoint, "lora_rank": 0}, "weights this flexify would drop"),
        ({"init": trained.checkpoint}, "a base checkpoint, not a flexify output"),
        ({"init": tmp_path / "notes.txt"}, r"notes.txt is not a \.safetensors file written by flexify"),
        ({"init": tmp_path / "notes.txt", "lora_rank": 2}, "--init notes.txt: "),
    ]
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    for change, message in refused:
        with pytest.raises(TrainError, match=message):
            flexify(FlexifyOptions(checkpoint=trained.checkpoint, out=out, **{**unranked, **change}))


def test_budgets_where_no_weak_size_runs_are_refused(trained, tmp_path):
    """At budget 1.0 the planner runs patch 2 alone: nothing to distil on (not every t, silently); budgets
    below what the model reaches say so instead of asking for lower ones."""
    for budgets, message in (((1.0, 1.0), "runs no weak patch size"), ((0.01, 0.02), "lies below what")):
        with pytest.raises(TrainError, match=message):
            flexify(
                FlexifyOptions(
                    checkpoint=trained.checkpoint,
                    out=tmp_path / "f.safetensors",
                    **{**FLEX, "budgets": budgets},
                )
            )


def test_checkpoint_without_the_requested_weak_size(flexified):
    cfg = load_checkpoint(flexified.checkpoint).config.replace(patch_sizes=(2, 4, 8))
    with pytest.raises(CheckpointError, match="no weights for patch size.*p8"):
        load_checkpoint(flexified.checkpoint, FlexiDiT.from_config(cfg, init="empty"))
    with pytest.raises(ValueError, match="patch size 8 is not one of this model's patch sizes"):
        load_checkpoint(flexified.checkpoint).static(8)


def test_self_distill_needs_no_dataset(trained, tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("self-distillation must not read the dataset")

    monkeypatch.setattr(flexify_module, "load_split", no_data)
    out = tmp_path / "self.safetensors"
    options = {**FLEX, "steps": 4, "self_distill": True, "self_distill_images": 20, "self_distill_steps": 5}
    result = flexify(FlexifyOptions(checkpoint=trained.checkpoint, out=out, **options))
    assert result.steps == 4 and out.exists()
    assert load_checkpoint(out).config.patch_sizes == (2, 4)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"patch_sizes": (2,)}, TrainError, "name no weak size"),
        ({"patch_sizes": (2, 3)}, TrainError, "not divisible by patch size 3"),
        ({"timesteps": "late"}, TrainError, "timesteps must be one of weak, all"),
        ({"self_distill": True, "data": "x"}, TrainError, "not both"),
        ({"lora_rank": -1}, TrainError, "LoRA rank must be >= 0"),
        ({"budgets": (0.8, 0.3)}, TrainError, "budgets must be a range"),
        ({"var_weight": -0.5}, TrainError, r"var weight must be in \[0, 1\]"),
    ],
)
def test_bad_flexify_options(trained, tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        flexify(
            FlexifyOptions(
                checkpoint=trained.checkpoint, out=tmp_path / "f.safetensors", **{**FLEX, **change}
            )
        )


def test_flexify_bad_checkpoint_and_output(tmp_path, trained):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        flexify(
            FlexifyOptions(checkpoint=tmp_path / "none.safetensors", out=tmp_path / "f.safetensors", **FLEX)
        )
    with pytest.raises(TrainError, match=r"\.safetensors file"):
        flexify(FlexifyOptions(checkpoint=trained.checkpoint, out=tmp_path / "f.pt", **FLEX))


def test_weak_range_covers_the_planned_weak_steps():
    """dit_fmnist, 250 steps, CFG: every timestep the planner gives p4 for budgets 0.3..0.75 lies in the
    range, and its ends are used (budget 0.3 gives the lowest t, every budget the noisiest)."""
    cfg = get_config("dit_fmnist")
    lo, hi = weak_timestep_ranges(cfg)[4]
    macs = {p: forward_macs(cfg, p) for p in cfg.patch_sizes}
    timesteps = make_sampler("ddpm", 250).timesteps
    for budget in (0.3, 0.5, 0.75):
        weak = [
            int(t) for t, p in zip(timesteps, plan(budget, 250, macs).patch_per_step, strict=True) if p == 4
        ]
        assert weak and lo <= min(weak) and max(weak) <= hi
    low = [int(t) for t, p in zip(timesteps, plan(0.3, 250, macs).patch_per_step, strict=True) if p == 4]
    assert (lo, hi) == (min(low), 999)
    assert 0 < lo < 500  # budget 0.3 runs most steps at p4


# -- the CLI ------------------------------------------------------------------------------------------------
def test_cli_train_and_flexify(data_dir, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--depth", "1", "--hidden-size", "32", "--num-heads", "2", "--steps",
            "3", "--batch-size", "8", "--subset", "64", "--quiet"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3 steps in" in result.output and "base.safetensors" in result.output
    result = runner.invoke(
        main,
        [
            "flexify",
            "--checkpoint",
            str(run / "base.safetensors"),
            "--patch-sizes",
            "2,4",
            "--lora-rank",
            "2",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--subset",
            "64",
            "--eval-images",
            "16",
            "--budgets",
            "0.5,0.75",
            "--var-weight",
            "0.5",
            "--quiet",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    # --budgets narrows the distilled timesteps to where those budgets run patch 4.
    config = load_checkpoint(run / "base.safetensors").config.replace(patch_sizes=(2, 4))
    lo, hi = weak_timestep_ranges(config, (0.5, 0.75))[4]
    assert lo > weak_timestep_ranges(config)[4][0]
    assert f"p4: held-out distillation MSE at t in [{lo}, {hi}]" in result.output
    assert f"p4: its noise-prediction half at t in [{lo}, {hi}]" in result.output
    assert load_checkpoint(run / "base.flex.safetensors").config.patch_sizes == (2, 4)


def test_cli_errors(tmp_path, trained):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out", str(tmp_path / "r"), "--lr", "-1"])
    assert result.exit_code == 2 and "lr must be a positive number" in result.output
    result = runner.invoke(main, ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "Fashion-MNIST folder not found" in result.output
    result = runner.invoke(main, ["flexify", "--checkpoint", str(trained.checkpoint), "--patch-sizes", "2"])
    assert result.exit_code == 2 and "name no weak size" in result.output
    result = runner.invoke(main, ["flexify", "--checkpoint", str(trained.checkpoint), "--budgets", "0.8,0.4"])
    assert result.exit_code == 2 and "budgets must be a range lo,hi" in result.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = runner.invoke(main, ["flexify", "--checkpoint", str(bad)])
    assert result.exit_code == 1 and "bad.safetensors" in result.output


@pytest.mark.parametrize("command", ["train", "flexify", "train-classifier"])
def test_cli_defaults_are_the_library_defaults(command):
    """Each option sets the options-object field of its name; its default must be that field's."""
    from flexidit_trt.training.classifier import ClassifierOptions

    options = {"train": TrainOptions, "flexify": FlexifyOptions, "train-classifier": ClassifierOptions}[
        command
    ]
    fields = {f.name: f.default for f in dataclasses.fields(options)}
    cmd = main.commands[command]
    ctx = click.Context(cmd)
    params = [p for p in cmd.params if p.name not in ("help", "quiet")]
    assert {p.name for p in params} <= set(fields)
    for param in params:
        if param.required or param.name == "out":
            continue
        default = param.get_default(ctx)
        default = param.callback(ctx, param, default) if param.callback else default  # e.g. "0.3,0.75"
        assert default == fields[param.name], param.name


# -- the committed default model ----------------------------------------------------------------------------
def test_default_model_file():
    """flexidit_trt/weights/default.safetensors (made by benchmarks/train_default.py): the flexible (2, 4)
    dit_fmnist in fp16, under 16 MB, read by load_checkpoint, with static(p) equal to the flexible forward."""
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL} is not committed yet (benchmarks/train_default.py makes it)")
    assert DEFAULT_MODEL.stat().st_size < 16 * 2**20
    stored = load_file(str(DEFAULT_MODEL))
    assert all(v.dtype == torch.float16 for k, v in stored.items() if k != "pos_embed")
    assert stored["pos_embed"].dtype == torch.float32  # the exact table, as static(p) recomputes it
    model = load_checkpoint(DEFAULT_MODEL).eval()
    cfg = model.config
    assert (cfg.name, cfg.in_channels, cfg.num_classes, cfg.input_size, cfg.patch_sizes) == (
        "dit_fmnist",
        1,
        10,
        32,
        (2, 4),
    )
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([900, 20]), torch.tensor([0, 10])
    with torch.no_grad():
        for p in (2, 4):
            torch.testing.assert_close(
                model.static(p)(x, t, y), model(x, t, y, patch_size=p), rtol=1e-4, atol=1e-5
            )
