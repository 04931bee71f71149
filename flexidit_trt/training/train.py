"""Base training: a class-conditional pixel-space DiT on Fashion-MNIST, trained as DiT trains.

The loop follows the reference train.py: uniform timesteps over the 1000-step schedule, q_sample, DiT's
loss (losses.DiffusionLoss: ε-MSE + the variational bound on the learned variance), AdamW without
weight decay, label dropout to the null class (for classifier-free guidance), an EMA of the weights
(the EMA is the model that is saved and sampled). Added for a short run on one GPU: bf16 autocast, a
linear warm-up, a time box, and a data order and per-step noise that are pure functions of
(seed, step), so that a resumed run continues exactly where the interrupted one would have gone.

Run folder (`out`):
    state.pt          model, EMA, optimizer, step, loss log: what --resume reads (written atomically)
    base.safetensors  the EMA weights at the last checkpoint (flexible-checkpoint format, fp32)
    losses.json       the loss curve (means over each logging interval)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts import atomic_path, write_json_atomic
from ..diffusion.schedule import NUM_TRAIN_TIMESTEPS, q_sample
from ..model import CheckpointError, FlexiDiT, get_config, load_checkpoint, save_checkpoint
from ..model.config import DiTConfig
from .data import IMAGE_SIZE, NUM_CLASSES, load_split
from .loop import BatchSchedule, LoopOptions, LossWatch, TrainError, cosine, resolve_device, warmup
from .losses import DiffusionLoss

STATE_NAME = "state.pt"
CHECKPOINT_NAME = "base.safetensors"
LOSSES_NAME = "losses.json"
LR_DECAYS = ("none", "cosine")


@dataclass(frozen=True)
class TrainOptions(LoopOptions):
    """Everything a base-training run depends on. Defaults are the embedded model's recipe.

    lr 3e-4 (DiT uses 1e-4 for 33-675 M parameters over 400 K steps; a 3 M-parameter model trained for
    about ten thousand steps takes a larger step), EMA 0.999 (DiT's 0.9999 averages over ~10 K steps,
    the length of the whole run here; 0.999 averages over the last ~1 K), with the EMA's decay ramped
    as (1 + n)/(10 + n) early on, so that a short run's EMA is not mostly the initial weights.
    """

    out: Path
    data: Path | None = None
    config: str = "dit_fmnist"
    depth: int | None = None  # overrides of the named config (tests train tiny models)
    hidden_size: int | None = None
    num_heads: int | None = None
    steps: int = 20_000  # stop after this many optimizer steps in total ...
    minutes: float | None = None  # ... or after this much training time in this process, whichever first
    batch_size: int = 256
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    class_dropout: float = 0.1
    subset: int | None = None  # train on the first N training images only
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    bf16: bool = True  # autocast on CUDA (ignored on the CPU, which trains in fp32)
    compile: bool = False  # torch.compile the model's forward
    checkpoint_every: int = 1000
    log_every: int = 50
    resume: bool = False
    init: Path | None = None  # start the model and its EMA from these weights (a new optimizer)
    lr_decay: str = "none"  # "cosine": after the warm-up, the lr falls to 0 at `steps`
    progress: bool = True

    # Fields a resumed run must share with the run it continues (the rest may change between sessions).
    IDENTITY = (
        "config",
        "depth",
        "hidden_size",
        "num_heads",
        "batch_size",
        "lr",
        "warmup_steps",
        "weight_decay",
        "ema_decay",
        "class_dropout",
        "subset",
        "seed",
        "lr_decay",
    )  # not init: it only says where step 0 started, and a resumed run starts from its own state

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.warmup_steps >= 0, f"warmup steps must be >= 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.ema_decay < 1, f"EMA decay must be in [0, 1), got {self.ema_decay}"),
            (
                0 < self.class_dropout < 1,
                f"class dropout must be in (0, 1) (the null class serves CFG), got {self.class_dropout}",
            ),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1, got {self.subset}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (
                self.lr_decay in LR_DECAYS,
                f"lr decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}",
            ),
            (
                self.init is None or Path(self.init).is_file(),
                f"--init {self.init}: no such file (a base checkpoint, e.g. a run's {CHECKPOINT_NAME})",
            ),
        ]

    def model_config(self) -> DiTConfig:
        overrides = {
            k: v
            for k, v in (
                ("depth", self.depth),
                ("hidden_size", self.hidden_size),
                ("num_heads", self.num_heads),
            )
            if v is not None
        }
        try:
            cfg = get_config(self.config, **overrides)
            # The base trains at its own patch only; flexify adds the weak sizes.
            cfg = cfg.replace(
                patch_sizes=(cfg.patch_size,), class_dropout_prob=self.class_dropout, lora_rank=0
            )
        except ValueError as err:
            raise TrainError(str(err)) from None
        if (cfg.in_channels, cfg.input_size, cfg.num_classes) != (1, IMAGE_SIZE, NUM_CLASSES):
            raise TrainError(
                f"config {self.config} takes {cfg.in_channels} channels at {cfg.input_size}×{cfg.input_size} "
                f"and {cfg.num_classes} classes; Fashion-MNIST is 1 channel at {IMAGE_SIZE}×{IMAGE_SIZE}, "
                f"{NUM_CLASSES} classes (use dit_fmnist, or override its depth and width)"
            )
        return cfg

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
        lr = self.lr * warmup(step, self.warmup_steps)
        if self.lr_decay == "cosine":
            lr *= cosine((step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return lr


@dataclass
class TrainResult:
    checkpoint: Path  # base.safetensors: the EMA weights
    step: int  # optimizer steps done in total (incl. resumed ones)
    seconds: float  # training time in total
    losses: list[dict]  # {"step", "loss", "mse", "vb", "seconds"} per logging interval
    stopped_by: str  # "steps" or "minutes"


def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) the base model; writes the run folder and returns where the weights are."""
    device = resolve_device(options.device)
    out = Path(options.out)
    state_path = out / STATE_NAME
    if options.resume and options.init is not None:
        raise TrainError("--init starts a new run from given weights; --resume continues one: pick one")
    if options.resume and not state_path.exists():
        raise TrainError(f"--resume: no training state in {out} (expected {state_path})")
    if not options.resume and state_path.exists():
        raise TrainError(f"{out} already holds a training run ({STATE_NAME}); pass --resume to continue it")
    cfg = options.model_config()
    x_all, y_all = load_split("train", options.data).tensors(options.subset, device)

    torch.manual_seed(options.seed)  # the initial weights
    model = FlexiDiT(cfg).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]  # pos_embed is a frozen table
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    step, seconds, losses = 0, 0.0, []
    if options.resume:
        step, seconds, losses = _restore(state_path, options, model, ema, opt)
    elif options.init is not None:
        _initialise(Path(options.init), model, ema)

    forward = torch.compile(model) if options.compile else model
    loss_fn = DiffusionLoss()
    batches = BatchSchedule(len(y_all), options.batch_size, options.seed, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=options.bf16 and device.type == "cuda")
    ema_pairs = ([p for p in ema.parameters()], [p for p in model.parameters()])
    sums = torch.zeros(3, device=device)  # loss, mse, vb summed since the last log line
    since_log, stopped_by = 0, "steps"
    watch = LossWatch("training", device)
    started = time.perf_counter()
    seconds_before = seconds

    def save() -> None:
        nonlocal seconds
        watch.check()  # never a checkpoint of diverged weights
        seconds = seconds_before + time.perf_counter() - started
        _save(out, options, model, ema, opt, step, seconds, losses)

    def log_line() -> None:
        nonlocal since_log
        watch.check()
        mean = (sums / since_log).tolist()  # the only host sync of the loop
        elapsed = seconds_before + time.perf_counter() - started
        losses.append(
            {"step": step, "loss": mean[0], "mse": mean[1], "vb": mean[2], "seconds": round(elapsed, 3)}
        )
        bar.set_postfix(loss=f"{mean[0]:.4f}", mse=f"{mean[1]:.4f}")
        sums.zero_()
        since_log = 0

    from tqdm.auto import tqdm

    bar = tqdm(total=options.steps, initial=step, disable=not options.progress, desc="train", unit="step")
    while step < options.steps:
        if options.minutes is not None and time.perf_counter() - started >= 60 * options.minutes:
            stopped_by = "minutes"
            break
        idx = batches.indices(step)
        gen = batches.generator(step)
        x0, y = x_all[idx], y_all[idx]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        drop = torch.rand(len(idx), generator=gen, device=device) < options.class_dropout
        y = torch.where(drop, torch.full_like(y, cfg.num_classes), y)  # null class
        x_t = q_sample(x0, t, noise)

        for group in opt.param_groups:
            group["lr"] = options.lr_at(step)
        with autocast:
            model_out = forward(x_t, t, y)
        terms = loss_fn(model_out, x0, t, noise, x_t)
        loss = terms.loss.mean()
        watch.add(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(options.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_pairs[0], ema_pairs[1], 1.0 - decay)
        step += 1

        sums += torch.stack([loss.detach(), terms.mse.mean().detach(), terms.vb.mean().detach()])
        since_log += 1
        bar.update(1)
        if step % options.log_every == 0 or step == options.steps:
            log_line()
        if step % options.checkpoint_every == 0:
            save()
    if since_log:  # stopped by the time box inside a logging interval
        log_line()
    bar.close()
    save()
    return TrainResult(out / CHECKPOINT_NAME, step, seconds, losses, stopped_by)


def _save(out: Path, options: TrainOptions, model, ema, opt, step: int, seconds: float, losses: list) -> None:
    state = {
        "identity": options.identity(),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "seconds": seconds,
        "losses": losses,
    }
    with atomic_path(out / STATE_NAME) as tmp:
        torch.save(state, tmp)
    meta = {"kind": "base", "step": str(step), "ema_decay": str(options.ema_decay)}
    save_checkpoint(ema, out / CHECKPOINT_NAME, metadata=meta)
    write_json_atomic(
        out / LOSSES_NAME, {"options": _jsonable(options), "step": step, "seconds": seconds, "losses": losses}
    )


def _restore(path: Path, options: TrainOptions, model, ema, opt) -> tuple[int, float, list]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainError(f"cannot read the training state {path}: {err}") from None
    saved = state.get("identity", {})
    changed = [
        f"{k}: run has {saved.get(k)!r}, options say {v!r}"
        for k, v in options.identity().items()
        if saved.get(k) != v
    ]
    if changed:
        raise TrainError(f"--resume: options differ from the run in {path.parent}: " + "; ".join(changed))
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    return int(state["step"]), float(state["seconds"]), list(state["losses"])


def _initialise(path: Path, model, ema) -> None:
    """Model and EMA from a base checkpoint of the same shape (weights only: the optimizer starts anew)."""
    try:
        init = load_checkpoint(path)
    except (CheckpointError, OSError, ValueError, KeyError) as err:
        raise TrainError(f"--init {path}: cannot read it as a checkpoint: {err}") from None
    own = model.state_dict()
    theirs = {k: v for k, v in init.state_dict().items() if k in own}
    wrong = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    a, b = init.config, model.config
    shape = (a.depth, a.hidden_size, a.num_heads, a.patch_size)
    if wrong or shape != (b.depth, b.hidden_size, b.num_heads, b.patch_size):
        raise TrainError(
            f"--init {path}: its model ({a.depth} blocks of width {a.hidden_size}, {a.num_heads} heads, patch "
            f"{a.patch_size}) is not the one these options train ({b.depth} blocks of width {b.hidden_size}, "
            f"{b.num_heads} heads, patch {b.patch_size}): "
            + (
                f"pass --depth {a.depth} --hidden-size {a.hidden_size} --num-heads {a.num_heads}"
                if a.patch_size == b.patch_size
                else "pass --config with its patch size"
            )
        )
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(theirs[key].to(value.dtype))
    ema.load_state_dict(model.state_dict())


def _jsonable(options) -> dict:
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in dataclasses.asdict(options).items()}
