"""Make the embedded default model in one GPU process: classifier, base training, flexify, samples.

Usage (on the GPU machine, from the repo root; nothing to build, the native extension is not needed):
    PYTHONUNBUFFERED=1 python3 benchmarks/train_default.py "$OUT" --minutes 7

Time-boxed: the whole script aims to finish within --minutes of wall time. Stages:
  1. the Fashion-MNIST classifier (fixed epochs, ~15 s on an H100) and its test accuracy
     (or --classifier FILE: reuse one);
  2. base training of dit_fmnist, time-boxed to what is left after reserving flexify and sampling
     (or --base FILE: reuse a trained base, e.g. a previous run's base.safetensors);
  3. flexify to (2, 4): with --ab (default) twice from the same base, "weak" timesteps (time-boxed to
     --flexify-minutes, N steps) and "all" timesteps (the same N steps); the one with the lower held-out
     distillation error at t in the weak range becomes default.safetensors (fp16), the other is kept as
     flex_<mode>.safetensors for a FID comparison. With --no-ab, one "weak" run of --flexify-minutes;
  4. samples of default.safetensors (loaded back with load_checkpoint): 10×10 grids at budgets 1.0
     and 0.5 (CFG 4), and the classifier's accuracy on 1,000 samples per budget (CFG 1.5), also for the
     untrained projection (budget 0.5), so the value of flexify shows.
Outputs in OUT (at most 8 files, each under 16 MB): base.safetensors (fp32 EMA), default.safetensors
(fp16), flex_<other>.safetensors (fp16, --ab only), classifier.safetensors, train_default.json (every
number and the loss curves), grid_budget1.0.png, grid_budget0.5.png, train_default.log. A short table
is printed last.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from flexidit_trt.model import load_checkpoint  # noqa: E402
from flexidit_trt.training.classifier import ClassifierOptions, load_classifier, train_classifier  # noqa: E402
from flexidit_trt.training.data import NUM_CLASSES, to_uint8  # noqa: E402
from flexidit_trt.training.flexify import FlexifyOptions, flexify, load_base  # noqa: E402
from flexidit_trt.training.sampling import SampleOptions, sample_images  # noqa: E402
from flexidit_trt.training.train import TrainOptions, train  # noqa: E402

START = time.perf_counter()
SAMPLING_RESERVE_MINUTES = 1.0  # grids, class accuracy of 3 × 1,000 samples, loading, with margin


class Tee:
    """Print to stdout and to the log file."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole run)

    def __call__(self, *parts) -> None:
        line = f"[{time.perf_counter() - START:6.1f}s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")


class Run:
    """The run's settings (from the arguments; --smoke shrinks everything) and what it has recorded."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="train_default_"))  # training state: too large to come back
        self.log = Tee(self.out / "train_default.log")
        self.device = "cpu" if args.smoke else "cuda"
        if self.device == "cuda" and not torch.cuda.is_available():
            sys.exit("needs a CUDA GPU (or --smoke for a tiny CPU run)")
        # --smoke: the same stages on a tiny model and data subsets, to check the script without a GPU.
        smoke = args.smoke
        self.tiny_train = (
            dict(depth=1, hidden_size=32, num_heads=2, subset=256, batch_size=16) if smoke else {}
        )
        self.tiny_flex = dict(subset=256, batch_size=16, eval_images=64) if smoke else {}
        self.tiny_cls = dict(subset=1000, test_subset=1000, width=8, epochs=1) if smoke else {}
        self.per_class = 2 if smoke else 100
        self.sample_steps = 25 if smoke else 250
        gpu = torch.cuda.get_device_name() if self.device == "cuda" else platform.processor() or "cpu"
        self.record: dict = {
            "gpu": gpu,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        self.log(f"{gpu}, torch {torch.__version__}")

    def reuse(self, given: Path | None, path: Path, key: str, stage: str) -> bool:
        """Whether a stage's output was given (--classifier, --base): then it is copied to `path` in place
        of running the stage, and the record's `key` says so."""
        if given is None:
            return False
        shutil.copy(given, path)
        self.record[key] = {"reused": str(given)}
        self.log(f"{stage}: reused {given}")
        return True


def make_classifier(run: Run) -> Path:
    path = run.out / "classifier.safetensors"
    if run.reuse(run.args.classifier, path, "classifier", "classifier"):
        return path
    options = {"out": path, "epochs": run.args.classifier_epochs, "device": run.device, "seed": run.args.seed}
    result = train_classifier(ClassifierOptions(**{**options, "progress": False, **run.tiny_cls}))
    run.record["classifier"] = {
        "test_accuracy": result.test_accuracy,
        "test_images": result.test_images,
        "seconds": result.seconds,
    }
    run.log(f"classifier: test accuracy {100 * result.test_accuracy:.2f}% on {result.test_images} images, "
            f"{result.seconds:.1f} s")  # fmt: skip
    return path


def make_base(run: Run) -> Path:
    path = run.out / "base.safetensors"
    if run.reuse(run.args.base, path, "train", "base"):
        return path
    flexify_runs = 2 if run.args.ab else 1
    reserve = flexify_runs * run.args.flexify_minutes + SAMPLING_RESERVE_MINUTES
    minutes = run.args.minutes - (time.perf_counter() - START) / 60 - reserve
    if minutes < 0.5:
        sys.exit(f"--minutes {run.args.minutes} leaves {minutes:.2f} min for base training; give more")
    run.log(f"base training for {minutes:.2f} min")
    options = {
        "out": run.work / "base",
        "minutes": minutes,
        "steps": 10**9,
        "batch_size": run.args.batch_size,
        "lr": run.args.lr,
        "device": run.device,
        "compile": run.args.compile,
        "seed": run.args.seed,
        "checkpoint_every": 2000,
        "log_every": 100,
        "progress": False,
    }
    result = train(TrainOptions(**{**options, **run.tiny_train}))
    shutil.copy(result.checkpoint, path)
    batch = run.tiny_train.get("batch_size", run.args.batch_size)
    run.record["train"] = {
        "steps": result.step,
        "seconds": result.seconds,
        "ms_per_step": 1000 * result.seconds / max(1, result.step),
        "images_per_s": result.step * batch / result.seconds,
        "batch_size": batch,
        "epochs": result.step * batch / 60000,
        "losses": result.losses,
    }
    shown = result.losses[:: max(1, len(result.losses) // 8)]
    for entry in shown + [e for e in result.losses[-1:] if e not in shown]:
        run.log(
            f"  step {entry['step']:6d}  loss {entry['loss']:.4f}  mse {entry['mse']:.4f}  vb {entry['vb']:.4f}"
        )
    run.log(f"base: {result.step} steps × {batch} in {result.seconds:.0f} s "
            f"({run.record['train']['ms_per_step']:.1f} ms/step)")  # fmt: skip
    return path


def make_flexible(run: Run, base: Path) -> tuple[Path, str]:
    """Flexify (A/B over the timestep range, or one run); returns default.safetensors and the mode used."""
    results, steps = {}, 10**9
    for mode in ("weak", "all") if run.args.ab else ("weak",):
        options = {
            "checkpoint": base,
            "out": run.work / f"flex_{mode}.safetensors",
            "timesteps": mode,
            "steps": steps,
            "minutes": run.args.flexify_minutes if mode == "weak" else None,
            "batch_size": run.args.batch_size,
            "lr": run.args.flexify_lr,
            "lora_rank": run.args.lora_rank,
            "device": run.device,
            "half": True,
            "seed": run.args.seed,
            "progress": False,
        }
        result = flexify(FlexifyOptions(**{**options, **run.tiny_flex}))
        steps = result.steps  # the second run gets exactly as many steps as the first
        results[mode] = result
        after, before = result.eval_after["p4"], result.eval_before["p4"]
        run.log(f"flexify {mode}: {result.steps} steps in {result.seconds:.0f} s; held-out MSE weak-t "
                f"{before['weak']:.5f} → {after['weak']:.5f}, all-t {before['all']:.5f} → {after['all']:.5f}")  # fmt: skip
    best = min(results, key=lambda m: results[m].eval_after["p4"]["weak"])
    path = run.out / "default.safetensors"
    shutil.copy(results[best].checkpoint, path)
    for mode in results.keys() - {best}:
        shutil.copy(results[mode].checkpoint, run.out / f"flex_{mode}.safetensors")
    run.record["flexify"] = {
        mode: {
            "steps": r.steps,
            "seconds": r.seconds,
            "t_range_p4": list(r.t_ranges[4]),
            "eval_before": r.eval_before,
            "eval_after": r.eval_after,
            "losses": r.losses,
        }
        for mode, r in results.items()
    }
    run.record["flexify"]["winner"] = best
    run.log(f"default = flexify with '{best}' timesteps")
    return path, best


def save_grid(images: torch.Tensor, path: Path, rows: int, scale: int = 2) -> None:
    """Tile [N, 1, 32, 32] images in [-1, 1] into a PNG (rows × N/rows, 2-pixel gaps)."""
    from PIL import Image

    tiles = to_uint8(images)
    cols = len(tiles) // rows
    side, gap = tiles.shape[1], 2
    canvas = Image.new("L", (cols * (side + gap) + gap, rows * (side + gap) + gap), color=128)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas.paste(Image.fromarray(tile), (gap + c * (side + gap), gap + r * (side + gap)))
    canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST).save(path)


def make_samples(run: Run, default: Path, base: Path, classifier_path: Path) -> None:
    """Grids of the written default model, and class accuracy of its samples (and of the projection)."""
    model = load_checkpoint(default).to(run.device).eval()
    projection = load_base(
        FlexifyOptions(checkpoint=base, out=run.work / "unused.safetensors", lora_rank=run.args.lora_rank)
    )
    projection = projection.to(run.device).eval()
    classifier = load_classifier(classifier_path, device=run.device)
    samples = {}
    for budget in (1.0, 0.5):
        t0 = time.perf_counter()
        labels = torch.arange(NUM_CLASSES, device=run.device).repeat_interleave(
            10 if not run.args.smoke else 2
        )
        options = SampleOptions(steps=run.sample_steps, budget=budget, cfg_scale=4.0, seed=run.args.seed)
        images = sample_images(model, labels, options).cpu()  # .cpu() waits for the GPU
        save_grid(images, run.out / f"grid_budget{budget}.png", rows=NUM_CLASSES)
        samples[f"grid_{budget}_seconds"] = time.perf_counter() - t0
    labels = torch.arange(NUM_CLASSES, device=run.device).repeat_interleave(run.per_class)
    for name, network, budget in (
        ("flexified", model, 1.0),
        ("flexified", model, 0.5),
        ("projection", projection, 0.5),
    ):
        options = SampleOptions(steps=run.sample_steps, budget=budget, cfg_scale=1.5, seed=run.args.seed + 1)
        predicted = classifier.classify(sample_images(network, labels, options)).argmax(1)
        accuracy = (predicted == labels).float().mean().item()
        samples[f"class_accuracy_{name}_{budget}"] = accuracy
        run.log(
            f"class accuracy of {len(labels)} samples ({name}, budget {budget}, cfg 1.5): {100 * accuracy:.1f}%"
        )
    run.record["samples"] = samples


def summary(run: Run) -> str:
    r = run.record
    rows = [("GPU", r["gpu"])]
    if "test_accuracy" in r["classifier"]:
        c = r["classifier"]
        rows.append(("classifier test accuracy", f"{100 * c['test_accuracy']:.2f}% ({c['seconds']:.0f} s)"))
    if "steps" in r["train"]:
        t = r["train"]
        loss = t["losses"][-1]["loss"] if t["losses"] else float("nan")
        rows.append(("base training", f"{t['steps']} steps × {t['batch_size']}, {t['seconds']:.0f} s "
                                      f"({t['ms_per_step']:.1f} ms/step), final loss {loss:.4f}"))  # fmt: skip
    for mode, f in ((m, f) for m, f in r["flexify"].items() if m != "winner"):
        e, lo = f["eval_after"]["p4"], f["t_range_p4"][0]
        rows.append((f"flexify '{mode}' (weak t = [{lo}, 999])", f"{f['steps']} steps: held-out MSE weak-t "
                                                                  f"{e['weak']:.5f}, all-t {e['all']:.5f}"))  # fmt: skip
    first = next(f for m, f in r["flexify"].items() if m != "winner")
    rows.append(
        ("projection only (before flexify)", f"held-out MSE weak-t {first['eval_before']['p4']['weak']:.5f}")
    )
    rows.append(("default", f"'{r['flexify']['winner']}' timesteps"))
    s = r["samples"]
    rows.append(("class accuracy, cfg 1.5: b1.0 / b0.5 / projection b0.5",
                 " / ".join(f"{100 * s[k]:.1f}%" for k in ("class_accuracy_flexified_1.0",
                            "class_accuracy_flexified_0.5", "class_accuracy_projection_0.5"))))  # fmt: skip
    rows.append(("files", ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in r["files"].items())))
    rows.append(("total", f"{r['seconds_total']:.0f} s"))
    return "\n".join(["| item | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--minutes", type=float, default=7.0, help="wall-time target for the whole script")
    ap.add_argument("--flexify-minutes", type=float, default=0.6, help="time box of each flexify run")
    ap.add_argument("--ab", action=argparse.BooleanOptionalAction, default=True,
                    help="flexify twice, weak-t vs all-t, and keep the better")  # fmt: skip
    ap.add_argument("--flexify-lr", type=float, default=FlexifyOptions.lr)
    ap.add_argument("--lora-rank", type=int, default=8, help="8: what made the 2026-11-22 default")
    ap.add_argument("--classifier-epochs", type=int, default=10)
    # The model is small: at 256 a step is bound by kernel launches, so 512 sees twice the images per second.
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=TrainOptions.lr)
    ap.add_argument("--compile", action="store_true", help="torch.compile the base model's training forward")
    ap.add_argument("--base", type=Path, default=None, help="reuse this trained base instead of training one")
    ap.add_argument("--classifier", type=Path, default=None, help="reuse these classifier weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny model, data subsets, CPU: checks the script")
    run = Run(ap.parse_args())

    classifier = make_classifier(run)
    base = make_base(run)
    default, _ = make_flexible(run, base)
    make_samples(run, default, base, classifier)
    run.record["files"] = {p.name: p.stat().st_size for p in sorted(run.out.iterdir()) if p.is_file()}
    run.record["seconds_total"] = time.perf_counter() - START
    (run.out / "train_default.json").write_text(json.dumps(run.record, indent=1))
    shutil.rmtree(run.work, ignore_errors=True)
    run.log("== summary ==\n" + summary(run))


if __name__ == "__main__":
    main()
