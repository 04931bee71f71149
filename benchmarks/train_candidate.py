"""Train a candidate base model for the default in time-boxed, resumable segments, measuring it after each.

Usage (on the GPU machine, from a checkout; nothing to build, the native extension is not needed):
    PYTHONUNBUFFERED=1 python3 benchmarks/train_candidate.py "$OUT" --run /tmp/cand --data DIR \
        --depth 6 --hidden-size 192 --num-heads 4 --train-minutes 3 --segments 2 --time-limit 330

Each segment is one `flexidit_trt.training.train` call on the run folder --run (the library behind
`flexidit-trt train`; the equivalent command line is logged), resumed with its own resume support, so a
later process (another device call, while the machine keeps /tmp) continues the same run exactly where it
stopped. After each segment the EMA weights (`base.safetensors`) are measured:
  - held-out loss: DiT's loss (ε-MSE + vb) on the first --heldout test images, at fixed timesteps and noise
    (the same draws at every checkpoint, so the curve is not the training loss's sampling noise);
  - class agreement: the project's classifier (flexidit_trt/weights/classifier.safetensors) on
    --eval-samples samples (equal per class), budget 1.0 (patch 2 only), DDPM --sample-steps steps, at each
    CFG scale of --cfgs, bf16 autocast, sampling seed --sample-seed (the same at every checkpoint).
The time box: training gets --train-minutes in --segments equal parts, each shortened if the script's wall
time would pass --time-limit (the measured evaluation time is reserved). With --baseline CKPT that checkpoint
(e.g. the current default) is measured the same way once, when time is left.

OUT receives train_candidate.log, train_candidate.json (every number; appended to the run's earlier
record if the run folder holds one), and with --export candidate_base.safetensors: the EMA weights in fp16
(the positional table kept exact, as flexify's --half does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_default import Tee  # noqa: E402

from flexidit_trt.diffusion.schedule import NUM_TRAIN_TIMESTEPS, q_sample  # noqa: E402
from flexidit_trt.model import load_checkpoint, save_checkpoint  # noqa: E402
from flexidit_trt.training.classifier import DEFAULT_CLASSIFIER, load_classifier  # noqa: E402
from flexidit_trt.training.data import NUM_CLASSES, load_split  # noqa: E402
from flexidit_trt.training.losses import DiffusionLoss  # noqa: E402
from flexidit_trt.training.sampling import SampleOptions, sample_images  # noqa: E402
from flexidit_trt.training.train import CHECKPOINT_NAME, STATE_NAME, TrainOptions, train  # noqa: E402

START = time.perf_counter()
RECORD_NAME = "train_candidate.json"


def elapsed() -> float:
    return time.perf_counter() - START


@torch.no_grad()
def heldout_loss(model, x0: torch.Tensor, y: torch.Tensor, seed: int, batch: int = 1000) -> dict:
    """DiT's loss terms of `model` on fixed (x0, t, noise): the same draws for every checkpoint."""
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(x0),), generator=gen, device=x0.device)
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    loss_fn, sums = DiffusionLoss(), torch.zeros(3, device=x0.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x0.device.type == "cuda")
    for i in range(0, len(x0), batch):
        s = slice(i, i + batch)
        x_t = q_sample(x0[s], t[s], noise[s])
        with autocast:
            out = model(x_t, t[s], y[s])
        terms = loss_fn(out, x0[s], t[s], noise[s], x_t)
        sums += torch.stack([terms.loss.sum(), terms.mse.sum(), terms.vb.sum()])
    loss, mse, vb = (sums / len(x0)).tolist()
    return {"loss": loss, "mse": mse, "vb": vb, "images": len(x0)}


def measure(path: Path, args, classifier, heldout, log) -> dict:
    """Held-out loss and class agreement at each CFG scale of the checkpoint at `path`."""
    t0 = time.perf_counter()
    model = load_checkpoint(path).to(args.device).eval()
    result = {"heldout": heldout_loss(model, *heldout, seed=args.seed + 1234)}
    per_class = args.eval_samples // NUM_CLASSES
    labels = torch.arange(NUM_CLASSES, device=args.device).repeat_interleave(per_class)
    for cfg in args.cfgs:
        t1 = time.perf_counter()
        options = SampleOptions(
            steps=args.sample_steps, budget=1.0, cfg_scale=cfg, seed=args.sample_seed, bf16=True
        )
        images = sample_images(model, labels, options)
        predicted = classifier.classify(images).argmax(1)
        agreement = (predicted == labels).float().mean().item()
        per = [(predicted[labels == c] == c).float().mean().item() for c in range(NUM_CLASSES)]
        result[f"cfg{cfg}"] = {
            "class_agreement": agreement,
            "per_class": per,
            "seconds": time.perf_counter() - t1,
        }
    result["seconds"] = time.perf_counter() - t0
    h = result["heldout"]
    log(f"  measured {path.name}: held-out loss {h['loss']:.5f} (mse {h['mse']:.5f}, vb {h['vb']:.5f}); "
        + "; ".join(f"class agreement cfg {c}: {result[f'cfg{c}']['class_agreement']:.3f}" for c in args.cfgs)
        + f" ({result['seconds']:.1f} s, {len(labels)} samples × {args.sample_steps} steps each)")  # fmt: skip
    return result


def cli_line(options: TrainOptions) -> str:
    """The `flexidit-trt train` command that runs the same segment."""
    parts = ["flexidit-trt train", f"--out {options.out}", f"--depth {options.depth}",
             f"--hidden-size {options.hidden_size}", f"--num-heads {options.num_heads}",
             f"--batch-size {options.batch_size}", f"--lr {options.lr}", f"--steps {options.steps}",
             f"--minutes {options.minutes:.3f}", f"--seed {options.seed}", "--quiet"]  # fmt: skip
    if options.data:
        parts.append(f"--data {options.data}")
    if options.resume:
        parts.append("--resume")
    if options.init:
        parts.append(f"--init {options.init}")
    if options.lr_decay != "none":
        parts.append(f"--lr-decay {options.lr_decay}")
    return " ".join(parts)


def export_half(base: Path, out: Path, metadata: dict) -> None:
    model = load_checkpoint(base).to("cpu")
    table = model.pos_embed.detach().clone()
    model = model.to(torch.float16)
    model.pos_embed.data = table  # a function of the config, kept exact (as flexify --half does)
    save_checkpoint(model, out, metadata=metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--run", type=Path, required=True, help="the training run folder (resumed if it holds one)"
    )
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--hidden-size", type=int, required=True)
    ap.add_argument("--num-heads", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=TrainOptions.lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="start a new run from these base weights")
    ap.add_argument("--steps", type=int, default=None, help="total steps (the cosine decay's end)")
    ap.add_argument("--lr-decay", choices=("none", "cosine"), default="none")
    ap.add_argument("--train-minutes", type=float, required=True, help="training time of this process")
    ap.add_argument("--segments", type=int, default=2, help="measure after each of this many equal parts")
    ap.add_argument(
        "--time-limit", type=float, default=None, help="seconds of wall time for the whole script"
    )
    ap.add_argument(
        "--eval-estimate", type=float, default=45.0, help="seconds reserved per measurement at first"
    )
    ap.add_argument("--require-resume", action="store_true", help="exit at once if --run holds no state")
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--cfgs", type=lambda s: [float(v) for v in s.split(",")], default=[1.5, 4.0])
    ap.add_argument("--sample-steps", type=int, default=250)
    ap.add_argument("--sample-seed", type=int, default=1)
    ap.add_argument("--heldout", type=int, default=2000, help="test images for the held-out loss")
    ap.add_argument("--baseline", type=Path, default=None, help="also measure this checkpoint once")
    ap.add_argument("--export", action="store_true", help="write candidate_base.safetensors (fp16) to OUT")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny data subset (CPU check of the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.run.mkdir(parents=True, exist_ok=True)
    log = Tee(args.out / "train_candidate.log")
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    log(f"{gpu}, torch {torch.__version__}; run {args.run}")
    state = args.run / STATE_NAME
    if args.require_resume and not state.exists():
        log(f"no training state at {state}: nothing to resume (the machine was not kept warm?)")
        sys.exit(3)
    previous = args.run / RECORD_NAME
    record = json.loads(previous.read_text()) if previous.exists() else {"segments": [], "calls": []}
    record["calls"].append(
        {"gpu": gpu, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    )

    classifier = load_classifier(DEFAULT_CLASSIFIER, device=args.device)
    x_test, y_test = load_split("test", args.data).tensors(args.heldout, args.device)
    heldout = (x_test, y_test)
    eval_seconds = args.eval_estimate
    for k in range(args.segments):
        minutes = planned = args.train_minutes / args.segments
        if args.time_limit is not None:
            measures_left = args.segments - k + (args.baseline is not None)
            left = args.time_limit - elapsed() - measures_left * eval_seconds - 15
            minutes = min(minutes, left / 60)
        if minutes < min(0.2, planned / 2):
            log(f"segment {k + 1}: {minutes:.2f} min left, stopping")
            break
        options = TrainOptions(
            out=args.run, data=args.data, depth=args.depth, hidden_size=args.hidden_size,
            num_heads=args.num_heads, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            steps=args.steps or 10**9, minutes=minutes, resume=state.exists(), progress=False,
            init=None if state.exists() else args.init, lr_decay=args.lr_decay, device=args.device,
            checkpoint_every=10**9, subset=1024 if args.smoke else None,
        )  # fmt: skip
        log(f"segment {k + 1}: {cli_line(options)}")
        result = train(options)
        new = [
            e for e in result.losses if not record["segments"] or e["step"] > record["segments"][-1]["step"]
        ]
        tail = result.losses[-5:]
        train_loss = sum(e["loss"] for e in tail) / len(tail)
        log(f"  step {result.step}, {result.seconds:.0f} s of training in all ({result.stopped_by}); "
            f"training loss (last {len(tail)} logs) {train_loss:.5f}")  # fmt: skip
        entry = {"step": result.step, "train_seconds": result.seconds, "train_loss_recent": train_loss,
                 "wall": elapsed(), "losses": new}  # fmt: skip
        entry.update(measure(args.run / CHECKPOINT_NAME, args, classifier, heldout, log))
        eval_seconds = max(entry["seconds"], 10.0)
        record["segments"].append(entry)
        (args.run / RECORD_NAME).write_text(json.dumps(record, indent=1))
        shutil.copy(args.run / RECORD_NAME, args.out / RECORD_NAME)
        if result.stopped_by == "steps":
            break
    if args.baseline is not None:
        if args.time_limit is None or args.time_limit - elapsed() > eval_seconds + 15:
            record["baseline"] = {"checkpoint": str(args.baseline)}
            record["baseline"].update(measure(args.baseline, args, classifier, heldout, log))
        else:
            log("baseline: no time left")
    (args.run / RECORD_NAME).write_text(json.dumps(record, indent=1))
    shutil.copy(args.run / RECORD_NAME, args.out / RECORD_NAME)
    if args.export and record["segments"]:
        last = record["segments"][-1]
        export_half(args.run / CHECKPOINT_NAME, args.out / "candidate_base.safetensors",
                    {"kind": "base", "step": str(last["step"]), "train_seconds": f"{last['train_seconds']:.1f}",
                     "ema_decay": str(TrainOptions.ema_decay), "dtype": "fp16 (EMA)"})  # fmt: skip
    rows = [
        "| step | train s | train loss | held-out loss | "
        + " | ".join(f"agree cfg {c}" for c in args.cfgs)
        + " |"
    ]
    for e in record["segments"] + (
        [dict(record["baseline"], step="baseline")] if "baseline" in record else []
    ):
        rows.append(f"| {e['step']} | {e.get('train_seconds', 0):.0f} | {e.get('train_loss_recent', float('nan')):.5f} | "
                    f"{e['heldout']['loss']:.5f} | "
                    + " | ".join(f"{e[f'cfg{c}']['class_agreement']:.3f}" for c in args.cfgs) + " |")  # fmt: skip
    log("== summary ==\n" + "\n".join(rows) + f"\nwall {elapsed():.0f} s")


if __name__ == "__main__":
    main()
