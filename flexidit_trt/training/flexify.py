"""Flexify: turn a base DiT into a FlexiDiT by distilling each weak patch size toward the base model.

Per weak patch size q the trainable parts are its embedding and de-embedding (initialised from the base
ones by the pseudo-inverse resize) and its LoRA adapters (zero-initialised, so training starts from the
plain projection); every base weight stays frozen. The teacher is the same network at the base patch,
which, the base weights being frozen, is exactly the base model. For each batch: images x_0 (the
dataset's, or the base model's own samples with `self_distill`), a timestep, noise and a label (the
null class with probability `null_fraction`, so the weak model also serves the unconditional half of
classifier-free guidance); the loss is the mean squared difference of the whole output (the ε half and
the variance-value half) between the student at q and the teacher at the base patch, on the same x_t,
t and label.

Timesteps: "weak" draws t from the range in which the planner runs the weak size for budgets in
`budgets` (with `plan_steps` DDPM steps): the noisy end of the trajectory, the only place it is used.
"all" draws from all 1000. benchmarks/train_default.py measures which is better (held-out distillation
error at t in the weak range). On an H100, dit_fmnist, 907 steps of batch 512 each (weak range [108, 999]):
"weak" 0.01683, "all" 0.01692 at weak t (at all t: 0.0557 vs 0.0294, but the planner never runs p4 below
t = 108), so "weak" is the default: as good where the weak size is used, for no capacity spent elsewhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..diffusion import make_sampler, plan
from ..diffusion.schedule import NUM_TRAIN_TIMESTEPS, q_sample
from ..model import CheckpointError, FlexiDiT, load_checkpoint, save_checkpoint
from ..model.checkpoints import check_finite, infer_config, read_state_dict
from ..model.config import DiTConfig
from ..model.dit import adapter_key, is_base_key
from ..model.macs import forward_macs
from .data import load_split
from .init_from import continue_from, init_config, lineage
from .loop import BatchSchedule, LoopOptions, LossWatch, TrainError, cosine, resolve_device, warmup
from .sampling import SampleOptions, sample_images

log = logging.getLogger(__name__)

TIMESTEP_MODES = ("weak", "all")
# What made the embedded default: rank 8 lost to 32 (step 3,000: 0.00581 vs 0.00446), and 32 and 64 were level.
DEFAULT_LORA_RANK = 64


@dataclass(frozen=True)
class FlexifyOptions(LoopOptions):
    """Distillation settings. lr: measured on the CPU from the trained dit_fmnist base (batch 32, 200 steps,
    constant lr, held-out MSE at weak t from 0.4525): 5e-4 → 0.0339, 1e-3 → 0.0266, 2e-3 → 0.0243; the
    zero-initialised adapters need a large step to get going, the cosine decay lets it settle after."""

    checkpoint: Path  # the base model (any layout load_checkpoint reads; a flexible one's base part is used)
    out: Path  # the flexible checkpoint to write (.safetensors)
    # Go on from this flexible checkpoint's weak embeddings and adapters (same base, patch sizes and rank)
    # instead of the projection: a distillation longer than one time box, in several (new optimizer and
    # cosine each time).
    init: Path | None = None
    patch_sizes: tuple[int, ...] = (2, 4)
    lora_rank: int | None = None  # None: --init's rank, else DEFAULT_LORA_RANK
    steps: int = 2000
    minutes: float | None = None  # time box for the distillation loop, whichever of steps/minutes first
    batch_size: int = 256
    lr: float = 2e-3  # peak; cosine decay to 0 over the steps or the time box, whichever ends first
    timesteps: str = "weak"
    budgets: tuple[float, float] = (0.3, 0.75)  # the planner budgets whose weak steps define "weak"
    # Weight of the learned-variance half of the output in the loss (1: the whole output's MSE). The sampler
    # reads it as a mix of log β_t and log β̃_t, which differ by < 2% at every t the planner runs a weak size
    # on (t > 100), so its error barely moves a sample, yet it is most of the error above t ≈ 360.
    var_weight: float = 1.0
    plan_steps: int = 250
    null_fraction: float = 0.1
    data: Path | None = None
    self_distill: bool = False
    self_distill_images: int = 2048  # pool of base-model samples to noise (10% held out for the eval)
    self_distill_steps: int = 50  # DDPM steps per pool sample
    subset: int | None = None
    eval_images: int = 1000  # held-out images for the distillation error
    half: bool = False  # store fp16 weights (the committed default model)
    seed: int = 0
    device: str | None = None
    bf16: bool = True
    log_every: int = 50
    progress: bool = True

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.lora_rank is None or self.lora_rank >= 0, f"LoRA rank must be >= 0, got {self.lora_rank}"),
            (
                self.timesteps in TIMESTEP_MODES,
                f"timesteps must be one of {', '.join(TIMESTEP_MODES)}, got {self.timesteps!r}",
            ),
            (0 <= self.null_fraction < 1, f"null fraction must be in [0, 1), got {self.null_fraction}"),
            (0 <= self.var_weight <= 1, f"var weight must be in [0, 1], got {self.var_weight}"),
            (
                len(self.budgets) == 2 and 0 < self.budgets[0] <= self.budgets[1] <= 1,
                f"budgets must be a range lo,hi with 0 < lo <= hi <= 1, got {self.budgets}",
            ),
            (
                not (self.self_distill and self.data is not None),
                "give --data or --self-distill, not both",
            ),
            (
                self.self_distill_images >= 10,
                f"self-distill images must be >= 10, got {self.self_distill_images}",
            ),
            (self.eval_images >= 1, f"eval images must be >= 1, got {self.eval_images}"),
            (
                Path(self.out).suffix == ".safetensors",
                f"the output is a .safetensors file, got {Path(self.out).name}",
            ),
        ]


@dataclass
class FlexifyResult:
    checkpoint: Path
    steps: int
    seconds: float
    t_ranges: dict[int, tuple[int, int]]  # weak patch size → [lo, hi] timesteps it is used at
    losses: list[dict] = field(default_factory=list)  # {"step", "loss", "seconds"} per logging interval
    # Distillation MSE on held-out images: {"p4": {"weak": .., "all": ..}} before ("projection") and after.
    eval_before: dict = field(default_factory=dict)
    eval_after: dict = field(default_factory=dict)


def weak_timestep_ranges(
    config: DiTConfig, budgets: tuple[float, float] = (0.3, 0.75), steps: int = 250
) -> dict[int, tuple[int, int]]:
    """For each weak patch size, the [lo, hi] original timesteps at which `plan` runs it, over budgets
    from budgets[0] to budgets[1] (every 0.05, CFG, `steps` DDPM steps). Budgets below what the model can
    reach are skipped; a size the planner never picks gets the whole range (nothing to narrow)."""
    return _ranges(planned_weak_timesteps(config, budgets, steps))


def _ranges(used: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
    return {q: (min(ts), max(ts)) if ts else (0, NUM_TRAIN_TIMESTEPS - 1) for q, ts in used.items()}


def planned_weak_timesteps(
    config: DiTConfig, budgets: tuple[float, float] = (0.3, 0.75), steps: int = 250
) -> dict[int, list[int]]:
    """For each weak patch size, every original timestep at which `plan` runs it over those budgets (as
    weak_timestep_ranges; empty where the planner never picks it)."""
    macs = {p: forward_macs(config, p) for p in config.patch_sizes}
    timesteps = make_sampler("ddpm", steps).timesteps
    lo, hi = budgets
    grid = sorted({lo, hi, *[round(b, 4) for b in torch.arange(lo, hi, 0.05).tolist()]})
    used: dict[int, list[int]] = {q: [] for q in config.weak_patch_sizes}
    for budget in grid:
        try:
            schedule = plan(budget, steps, macs, "cfg")
        except ValueError:  # below the lowest reachable budget
            continue
        for t, p in zip(timesteps, schedule.patch_per_step, strict=True):
            if p in used:
                used[p].append(int(t))
    return used


def load_base(options: FlexifyOptions) -> FlexiDiT:
    """The base weights of `options.checkpoint` in a model with the requested patch sizes and LoRA rank;
    weak sizes start from the pinv-resized base, adapters as no-ops."""
    state, config, hints = read_state_dict(options.checkpoint)
    check_finite(state)  # every weight, not only the base ones kept: NaN anywhere means a damaged file
    base = {k: v for k, v in state.items() if is_base_key(k)}
    if not base:
        raise CheckpointError(f"{options.checkpoint} holds no base DiT weights")
    config = config or infer_config(base, **hints)
    sizes = tuple(sorted(set(options.patch_sizes) | {config.patch_size}))
    if sizes == (config.patch_size,):
        raise TrainError(
            f"patch sizes {list(options.patch_sizes)} name no weak size besides the base patch {config.patch_size}"
        )
    rank = options.lora_rank
    if rank is None:
        rank = init_config(options.init).lora_rank if options.init is not None else DEFAULT_LORA_RANK
    try:
        config = config.replace(patch_sizes=sizes, lora_rank=rank, lora_alpha=None)
    except ValueError as err:
        raise TrainError(str(err)) from None
    torch.manual_seed(options.seed)  # the adapters' down-projections
    model = FlexiDiT(config)  # reference init, incl. adapters; the base weights are overwritten below
    model = load_checkpoint(base, model)
    if options.init is not None:
        continue_from(model, base, options.init)
    return model


def _check_planned(cfg: DiTConfig, options: FlexifyOptions, used: dict[int, list[int]]) -> None:
    """A budget range at which the planner runs no weak size would distil on every t, not the weak ones:
    refused. A weak size it never picks there is trained on every t (said in the log). `used`:
    planned_weak_timesteps at options.budgets."""
    lo, hi = options.budgets
    macs = {p: forward_macs(cfg, p) for p in cfg.patch_sizes}
    try:  # the top of the range must be reachable, or every budget in it is skipped
        plan(hi, options.plan_steps, macs, "cfg")
    except ValueError as err:
        raise TrainError(f"--budgets {lo:g},{hi:g} lies below what this model reaches: {err}") from None
    unused = [f"p{q}" for q, ts in used.items() if not ts]
    if len(unused) == len(used):
        raise TrainError(
            f"at budgets {lo:g}..{hi:g} the planner runs no weak patch size: give --budgets lower than that, "
            f"or --timesteps all"
        )
    if unused:
        log.warning("%s: no step at budgets %g..%g, so distilled on every t", ", ".join(unused), lo, hi)


def trainable_parameters(model: FlexiDiT) -> dict[str, torch.nn.Parameter]:
    """The weak sizes' embeddings, de-embeddings and LoRA adapters; everything else is frozen."""
    weak = [adapter_key(q) for q in model.config.weak_patch_sizes]
    chosen = {}
    for name, param in model.named_parameters():
        is_weak = name.startswith("weak.") or any(f".lora.{k}." in name for k in weak)
        param.requires_grad_(is_weak)
        if is_weak:
            chosen[name] = param
    return chosen


def flexify(options: FlexifyOptions) -> FlexifyResult:
    """Distil the weak patch sizes of a base checkpoint and write the flexible checkpoint."""
    device = resolve_device(options.device)
    model = load_base(options).to(device)
    record = lineage(options.init) if options.init is not None else {}  # read now: the file may go
    cfg = model.config
    params = trainable_parameters(model)
    used = planned_weak_timesteps(cfg, options.budgets, options.plan_steps)
    if options.timesteps == "weak":
        _check_planned(cfg, options, used)
    ranges = _ranges(used)
    x_train, y_train, x_eval, y_eval = _inputs(model, options, device)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=options.bf16 and device.type == "cuda")
    eval_before = distillation_error(model, x_eval, y_eval, ranges, options.seed, autocast)
    opt = torch.optim.AdamW(params.values(), lr=options.lr, weight_decay=0.0)
    batches = BatchSchedule(len(y_train), options.batch_size, options.seed + 1, device)
    losses: list[dict] = []
    sums, since_log, step = torch.zeros((), device=device), 0, 0
    started = time.perf_counter()
    from tqdm.auto import tqdm

    def log_line() -> None:
        nonlocal since_log
        watch.check()
        mean = (sums / since_log).item()
        losses.append({"step": step, "loss": mean, "seconds": round(time.perf_counter() - started, 3)})
        bar.set_postfix(loss=f"{mean:.5f}")
        sums.zero_()
        since_log = 0

    model.train()
    watch = LossWatch("flexify", device)
    bar = tqdm(total=options.steps, disable=not options.progress, desc="flexify", unit="step")
    while step < options.steps and not _out_of_time(options, started):
        for group in opt.param_groups:
            group["lr"] = options.lr * _cosine(step, options, started)
        idx = batches.indices(step)
        loss = distillation_loss(
            model, x_train[idx], y_train[idx], ranges, batches.generator(step), options, autocast
        )
        watch.add(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        sums += loss.detach()
        since_log += 1
        bar.update(1)
        if step % options.log_every == 0 or step == options.steps:
            log_line()
    if since_log:  # stopped by the time box inside a logging interval
        log_line()
    bar.close()
    seconds = time.perf_counter() - started
    model.eval().requires_grad_(False)
    eval_after = distillation_error(model, x_eval, y_eval, ranges, options.seed, autocast)

    meta = {
        "kind": "flexible",
        "base_checkpoint": Path(options.checkpoint).name,
        **record,
        "distill_steps": str(step),
        "distill_timesteps": options.timesteps,
        "distill_var_weight": str(options.var_weight),
        "weak_t_ranges": str({f"p{q}": list(r) for q, r in ranges.items()}),
        "distill_inputs": "self-distill" if options.self_distill else "data",
    }
    saved = model.to("cpu")
    if options.half:
        table = saved.pos_embed.detach().clone()
        saved = saved.to(torch.float16)
        # The sin-cos table is a function of the config, not a learned weight: stored rounded to fp16 it would
        # differ from the exact one that static(p) recomputes, and so would the two forwards.
        saved.pos_embed.data = table
    save_checkpoint(saved, options.out, metadata=meta)
    return FlexifyResult(Path(options.out), step, seconds, ranges, losses, eval_before, eval_after)


def distillation_loss(
    model: FlexiDiT,
    x0: torch.Tensor,
    labels: torch.Tensor,
    ranges: dict[int, tuple[int, int]],
    gen: torch.Generator,
    options: FlexifyOptions,
    autocast: torch.autocast,
) -> torch.Tensor:
    """Sum over weak sizes of MSE(student at q, teacher at the base patch), same x_t, t, y: the whole
    output's, or with the learned-variance half weighted by options.var_weight."""
    cfg = model.config
    device = x0.device
    drop = torch.rand(len(x0), generator=gen, device=device) < options.null_fraction
    y = torch.where(drop, torch.full_like(labels, cfg.num_classes), labels)
    loss = torch.zeros((), device=device)
    for q, (lo, hi) in ranges.items():
        if options.timesteps == "all":
            lo, hi = 0, NUM_TRAIN_TIMESTEPS - 1
        t = torch.randint(lo, hi + 1, (len(x0),), generator=gen, device=device)
        x_t = q_sample(x0, t, torch.randn(x0.shape, generator=gen, device=device))
        with autocast:
            with torch.no_grad():
                teacher = model(x_t, t, y, patch_size=cfg.patch_size)
            student = model(x_t, t, y, patch_size=q)
        loss = loss + _output_mse(student.float(), teacher.float(), cfg, options.var_weight)
    return loss


def _output_mse(
    student: torch.Tensor, teacher: torch.Tensor, cfg: DiTConfig, var_weight: float
) -> torch.Tensor:
    """The whole output's MSE with the variance channels' share scaled by var_weight (1: plain MSE)."""
    if var_weight == 1.0 or not cfg.learn_sigma:
        return F.mse_loss(student, teacher)
    c = cfg.in_channels
    eps = F.mse_loss(student[:, :c], teacher[:, :c])
    var = F.mse_loss(student[:, c:], teacher[:, c:])
    return (eps + var_weight * var) / 2  # the two halves are the same size


# Going on from trained adapters (--init), a new AdamW's first steps at full lr undo them: on the CPU one
# step at 5e-4 took the default's held-out error from 0.0028 to 0.0148. So the lr ramps up over these.
INIT_WARMUP_STEPS = 200


def _cosine(step: int, options: FlexifyOptions, started: float) -> float:
    """Cosine decay factor over the run: the fraction done is of the steps, or of the time box if further;
    from --init, ramped up linearly over INIT_WARMUP_STEPS first."""
    done = step / options.steps
    if options.minutes is not None:
        done = max(done, (time.perf_counter() - started) / (60 * options.minutes))
    ramp = warmup(step, INIT_WARMUP_STEPS) if options.init is not None else 1.0
    return ramp * cosine(done)


def _out_of_time(options: FlexifyOptions, started: float) -> bool:
    return options.minutes is not None and time.perf_counter() - started >= 60 * options.minutes


@torch.no_grad()
def distillation_error(
    model: FlexiDiT,
    x0: torch.Tensor,
    y: torch.Tensor,
    ranges: dict[int, tuple[int, int]],
    seed: int,
    autocast: torch.autocast,
    batch_size: int = 500,
) -> dict[str, dict[str, float]]:
    """Mean squared student−teacher difference of the whole output on fixed held-out inputs, per weak
    size: at t drawn from its weak range ("weak") and from all 1000 ("all"), and the noise-prediction half
    alone at the weak t ("weak_eps", where the model learns a variance too). Deterministic (seeded)."""
    was_training = model.training
    model.eval()
    device = x0.device
    result = {}
    for q, (lo, hi) in ranges.items():
        errs = {}
        for name, (a, b) in (("weak", (lo, hi)), ("all", (0, NUM_TRAIN_TIMESTEPS - 1))):
            gen = torch.Generator(device=device).manual_seed(seed + 12345)
            total, eps, count = 0.0, 0.0, 0
            for xs, ys in zip(x0.split(batch_size), y.split(batch_size), strict=True):
                t = torch.randint(a, b + 1, (len(xs),), generator=gen, device=device)
                x_t = q_sample(xs, t, torch.randn(xs.shape, generator=gen, device=device))
                with autocast:
                    teacher = model(x_t, t, ys, patch_size=model.config.patch_size).float()
                    student = model(x_t, t, ys, patch_size=q).float()
                squared = (student - teacher).square()
                total += squared.mean(dim=(1, 2, 3)).sum().item()
                eps += squared[:, : model.config.in_channels].mean(dim=(1, 2, 3)).sum().item()
                count += len(xs)
            errs[name] = total / count
            if name == "weak" and model.config.learn_sigma:
                errs["weak_eps"] = eps / count
        result[adapter_key(q)] = errs
    model.train(was_training)
    return result


def _inputs(model: FlexiDiT, options: FlexifyOptions, device: torch.device):
    """Training and held-out images with labels: the dataset's (train / test split), or the base
    model's own samples (a pool made with a short DDPM run; its last 10% held out)."""
    cfg = model.config
    if options.self_distill:
        gen = torch.Generator().manual_seed(options.seed)
        labels = torch.randint(0, cfg.num_classes, (options.self_distill_images,), generator=gen).to(device)
        sample = SampleOptions(
            steps=options.self_distill_steps, cfg_scale=1.0, seed=options.seed, bf16=options.bf16
        )
        model.eval()
        pool = torch.cat([sample_images(model, chunk, sample) for chunk in labels.split(1024)])
        pool = pool.clamp(-1, 1)  # the data range the teacher was trained on
        n_eval = max(1, len(pool) // 10)
        y_eval = labels[:n_eval].clone()
        y_eval[::10] = cfg.num_classes
        return pool[n_eval:], labels[n_eval:], pool[:n_eval], y_eval
    if cfg.in_channels != 1 or cfg.input_size != 32 or cfg.num_classes != 10:
        raise TrainError(
            f"--data trains on Fashion-MNIST (1 channel, 32×32, 10 classes), but the checkpoint is "
            f"{cfg.in_channels} channels, {cfg.input_size}×{cfg.input_size}, {cfg.num_classes} classes; use --self-distill"
        )
    x_train, y_train = load_split("train", options.data).tensors(options.subset, device)
    x_eval, y_eval = load_split("test", options.data).tensors(options.eval_images, device)
    y_eval[::10] = cfg.num_classes  # every tenth held-out input unconditional, as the training mix
    return x_train, y_train, x_eval, y_eval
