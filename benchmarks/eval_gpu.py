"""The full quality-against-compute evaluation, on one GPU, resumable across device calls.

    python3 benchmarks/eval_gpu.py OUT_DIR [--checkpoint FLEX] [--base BASE] [--inception PATH] [--data DIR]
                                   [--state DIR] [--only WAY[:BUDGET],...] [--cfg-scales 1.0,1.5,...]
                                   [--time-limit S] [...]
    torchrun --nproc-per-node N benchmarks/eval_gpu.py OUT_DIR ...     (every GPU of a host, over NCCL)

Three ways, 10,000 samples per run, 250 DDPM steps, budgets 1.0 (seeds 0 and 1), 0.75, 0.6, 0.5, 0.4, 0.3:
  projection  the base weights, weak patch size by pseudo-inverse resize of the embeddings, no flexify,
              CFG (its budget-1.0 run is flexify's: at 1.0 only the base patch runs, whose weights
              flexify does not touch, so it is not sampled twice and the table says so);
  flexify     the flexified checkpoint, CFG;
  w2s         the flexified checkpoint, weak-to-strong guidance (its 1.0 and 0.75 plans are the same
              all-p2 schedule at ~61% of the static compute: their samples are shared).
The base model's own quality is the flexify way at budget 1.0 (FID, class accuracy).
With --cfg-scales (a guidance sweep) every run is made at each scale (w2s at --w2s-scale alone when that
is given); the seed repeat is at the first scale, and the first scale's runs come first.

Order: the base quality (flexify at 1.0), budgets 0.5 and 0.6 of every way and the seed repeat come
first (about half the compute), then the rest, so that a call cut short keeps what matters most.

Cost, measured (one H200, bf16, the default dit_fmnist: depth 7, hidden 192, 0.971 GMAC per image forward
at p2): 10,000 samples at budget 1.0 take ~125 s (80 images/s), at 0.5 ~70 s (150), at 0.4 ~62 s (180),
Inception and the classifier included; the 19 runs add up to ~10 static runs: ~21 min of sampling, 3 calls
of 540 s on one GPU, about half that on two.

Resumable: every finished chunk of samples goes to STATE/chunks, every finished run to STATE/runs, and
OUT_DIR/runs.tar holds the finished runs (small) so that a later call on a fresh machine can go on with
`--import-runs runs.tar` (and `--report-only` rewrites the outputs from those, sampling nothing). A run
at budget 1.0 (flexify) samples with the base patch size alone and is keyed by the checkpoint's base
tensors and config, so another flexify of the same base imports it instead of sampling it again
(`--import-runs benchmarks/results/eval/runs.tar`). The script stops starting chunks
--time-limit seconds after its start (less a reserve for the last run's metrics), writes what it has, and
says what is left; run the same command again to continue. OUT_DIR receives 6 files, 7 with a sweep (the
device tool returns at most 8):
eval_gpu.log, results.json, results.md, quality_vs_compute.png, guidance_sweep.png (several scales only),
samples.png (a row of grids per way and scale, one grid per budget), runs.tar. The table printed last is
results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flexidit_trt.evaluation.options import OptionsError, parse_scales  # noqa: E402

BUDGETS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.3)
# How far above budget 1.0 (same CFG scale) a budget may land, on FID and on the classifier FD alike:
# 5% at 0.5 and 10% at 0.4 (2% at 0.5 under CFG 4.0, run's default guidance), 2% at 0.6.
TARGETS = {0.6: 0.02, 0.5: 0.05, 0.4: 0.10}
TARGETS_AT_CFG = {(4.0, 0.5): 0.02}


def target(cfg_scale: float, budget: float) -> float | None:
    """How far above budget 1.0 a run at (CFG scale, budget) may land, or None where no target is set."""
    return TARGETS_AT_CFG.get((cfg_scale, budget), TARGETS.get(budget))


@dataclass(frozen=True)
class Way:
    name: str
    title: str
    guidance: str
    projection_only: bool
    budgets: tuple[float, ...]


# The order runs are made in, so that a call cut short has what matters most: the base quality, the
# target budgets of every way and the seed repeat first (about half the compute), then the rest.
FIRST = [
    ("flexify", 1.0, 0),
    ("flexify", 0.5, 0),
    ("flexify", 0.6, 0),
    ("w2s", 0.5, 0),
    ("w2s", 0.6, 0),
    ("projection", 0.5, 0),
    ("projection", 0.6, 0),
    ("flexify", 1.0, 1),
]
DISPLAY = ("projection", "flexify", "w2s")


def priority(way: str, budget: float, seed_offset: int, scale_index: int = 0) -> tuple:
    key = (way, budget, seed_offset)
    if key in FIRST and scale_index == 0:
        return (0, FIRST.index(key))
    return (1, scale_index, ("flexify", "w2s", "projection").index(way), BUDGETS.index(budget), seed_offset)


WAYS = {
    "projection": Way("projection", "projection only (no flexify), CFG", "cfg", True, BUDGETS[1:]),
    "flexify": Way("flexify", "after flexify, CFG", "cfg", False, BUDGETS),
    "w2s": Way("w2s", "after flexify, weak-to-strong guidance", "weak_to_strong", False, BUDGETS),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    ap.add_argument("out", type=Path, help="the folder the report goes to (see above)")
    ap.add_argument(
        "--checkpoint", type=Path, default=None, help="flexified checkpoint [default: the packaged model]"
    )
    ap.add_argument(
        "--base", type=Path, default=None, help="base checkpoint for 'projection' [default: derived]"
    )
    ap.add_argument(
        "--inception", type=Path, default=None, help="a copy of default_1.pt [default: the package's]"
    )
    ap.add_argument("--data", type=Path, default=None, help="Fashion-MNIST folder (the t10k files suffice)")
    ap.add_argument("--classifier", type=Path, default=None, help="[default: the packaged classifier]")
    ap.add_argument(
        "--state",
        type=Path,
        default=Path("/tmp/flexidit-eval-state"),
        help="finished chunks and runs: resumable",
    )
    ap.add_argument("--import-runs", type=Path, default=None, help="a runs.tar from an earlier call")
    ap.add_argument("--only", default=None, help="e.g. flexify:1.0,w2s (ways, optionally one budget each)")
    ap.add_argument("--num-samples", type=int, default=10_000, help="samples per run")
    ap.add_argument("--steps", type=int, default=250, help="DDPM steps")
    ap.add_argument("--batch-size", type=int, default=500, help="samples per chunk (the unit of resuming)")
    ap.add_argument("--cfg-scale", type=float, default=1.5, help="the CFG scale without --cfg-scales")
    ap.add_argument(
        "--cfg-scales",
        type=scales_arg,
        default=None,
        help="a guidance sweep, e.g. 1.0,1.5,2.0,3.0,4.0: every run at each [default: --cfg-scale]",
    )
    ap.add_argument(
        "--w2s-scale", type=float, default=None, help="w2s at this scale only [default: the CFG scales]"
    )
    ap.add_argument("--precision", default=None, help="fp32, bf16 or fp16 [default: the Pipeline's: bf16]")
    ap.add_argument(
        "--fp8", action="store_true", help="block GEMMs in FP8 where the rows allow (EngineOptions.fp8)"
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the engines (EvalOptions.compile): fused kernels",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="every run's seed; budget 1.0 at the first CFG scale also runs seed + 1 (the seed repeat)",
    )
    ap.add_argument("--reference-count", type=int, default=None, help="test images [default: all 10,000]")
    ap.add_argument("--time-limit", type=float, default=540.0, help="seconds from start; no new chunk after")
    ap.add_argument("--reserve", type=float, default=45.0, help="seconds kept for the last run's metrics")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="sample nothing: write the report of the saved runs at the scales asked for, whatever their seed "
        "(e.g. on a CPU); the runs asked for that are not there are named",
    )
    return ap.parse_args(argv)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default where it has one and its help does not
    name it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default  # by identity: 0 == False
        if default is None or default is False or default == argparse.SUPPRESS or "[default" in text:
            return text
        return f"{text} [default: %(default)s]".strip()


def scales_arg(text: str) -> tuple[float, ...]:
    """argparse type of --cfg-scales: the library's parse, its error as argparse's."""
    try:
        return parse_scales(text)
    except OptionsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def scales_of(args, way: Way) -> tuple[float, ...]:
    """The CFG scales a way runs at: the sweep (or --cfg-scale); w2s at --w2s-scale alone when given."""
    if way.guidance == "weak_to_strong" and args.w2s_scale is not None:
        return (args.w2s_scale,)
    return args.cfg_scales or (args.cfg_scale,)


def pending_runs(args, ways: list[Way], only) -> list[tuple[Way, float, float, int]]:
    """(way, cfg scale, budget, seed) of every run not saved yet, in the order they are made; budget 1.0
    also with the next seed, at each way's first scale."""
    seeds = (args.seed, args.seed + 1)
    runs = []
    for w in ways:
        scales = scales_of(args, w)
        for i, c in enumerate(scales):
            for b in w.budgets:
                for s in seeds if b == 1.0 and i == 0 else seeds[:1]:
                    if wanted(only, w.name, b) and not is_saved(args, w.name, c, b, s):
                        runs.append((w, c, b, s))
    return sorted(
        runs,
        key=lambda run: priority(
            run[0].name, run[2], run[3] - args.seed, scales_of(args, run[0]).index(run[1])
        ),
    )


def parse_only(text: str | None) -> set[tuple[str, float | None]] | None:
    if not text:
        return None
    chosen = set()
    for item in text.split(","):
        way, _, budget = item.strip().partition(":")
        if way not in WAYS:
            raise SystemExit(f"--only: unknown way {way!r}; ways: {', '.join(WAYS)}")
        chosen.add((way, float(budget) if budget else None))
    return chosen


def wanted(only, way: str, budget: float) -> bool:
    return only is None or (way, None) in only or (way, budget) in only


# -- models ---------------------------------------------------------------------------------------------------
def projection_only(model):
    """The same base weights with every weak size re-derived by pinv resize and no adapters: the model
    before flexify (what load_checkpoint makes of a base checkpoint)."""
    from flexidit_trt.model import FlexiDiT, load_checkpoint
    from flexidit_trt.model.dit import is_base_key

    base = {k: v for k, v in model.state_dict().items() if is_base_key(k)}
    return load_checkpoint(base, FlexiDiT.from_config(model.config.replace(lora_rank=0), init="empty"))


def load_models(args, ways: list[Way]) -> dict[str, object]:
    from flexidit_trt.evaluation.evaluator import load_model

    flexified, source = load_model(args.checkpoint, (2, 4))
    models = {"flexified": flexified}
    if any(w.projection_only for w in ways):
        if args.base is not None:
            base, _ = load_model(args.base, (2, 4))
        else:
            base = projection_only(flexified)
        models["projection"] = base.eval().requires_grad_(False)
    models["source"] = source
    return models


# -- saved runs -----------------------------------------------------------------------------------------------
def settings_key(args, patch2_only: bool = False) -> str:
    """What a saved run's numbers depend on besides (way, budget, seed): a run made under other settings
    (another checkpoint, sample count, step count, ...) is not reused. The CFG scale is in the run's name.
    patch2_only: the key of the runs that use only the base patch size (flexify at budget 1.0), where the
    checkpoint counts by its base tensors and config (base_weights_sha256), so another flexify of the same
    base finds them made. --compile and --fp8 are in both keys: they change the samples."""
    from flexidit_trt.artifacts import sha256_file, sha256_json
    from flexidit_trt.evaluation.evaluator import default_checkpoint
    from flexidit_trt.training.classifier import DEFAULT_CLASSIFIER

    checkpoint = Path(args.checkpoint or default_checkpoint())
    settings = {
        "checkpoint": base_weights_sha256(checkpoint) if patch2_only else sha256_file(checkpoint),
        **({} if patch2_only else {"base": sha256_file(args.base) if args.base else "derived"}),
        "classifier": sha256_file(args.classifier or DEFAULT_CLASSIFIER)
        if (args.classifier or DEFAULT_CLASSIFIER).is_file()
        else None,
        "results": 2,  # 2: runs carry classifier_fd
        **{k: getattr(args, k) for k in ("num_samples", "steps", "batch_size")},
        **{k: getattr(args, k) for k in ("precision", "reference_count")},
        **({"fp8": True} if args.fp8 else {}),  # absent when off: earlier runs stay valid
        **({"compile": True} if args.compile else {}),
    }
    return sha256_json(settings)[:12]


def base_weights_sha256(checkpoint: Path) -> str:
    """What a budget-1.0 run samples with, hashed: the loaded model's base tensors (the weak sizes'
    embeddings and adapters left out) and every config field the base patch's forward reads (all but the
    weak sizes, the adapters' and the name)."""
    from flexidit_trt.artifacts import sha256_json, sha256_state_dict
    from flexidit_trt.evaluation.evaluator import load_model
    from flexidit_trt.model.dit import is_base_key

    model, _ = load_model(checkpoint, (2,))
    config = json.loads(model.config.to_json())
    for key in ("patch_sizes", "lora_rank", "lora_alpha", "name"):
        config.pop(key, None)
    tensors = sha256_state_dict({k: v for k, v in model.state_dict().items() if is_base_key(k)})
    return sha256_json({"config": config, "base tensors": tensors})


def base_patch_only(way: str, budget: float) -> bool:
    """Runs that sample with the base patch size alone: CFG (the flexify way) at budget 1.0."""
    return way == "flexify" and budget == 1.0


RUN_NAME = re.compile(
    r"^(?P<way>[a-z0-9]+)_cfg(?P<cfg>[^_]+)_b(?P<budget>[0-9.]+)_s(?P<seed>\d+)_(?P<key>\w+)$"
)


def run_keys(args, way: str, budget: float) -> list[str]:
    """The settings keys a run may be saved under, the one it is saved under first: a base-patch-only run
    under the base tensors' key, or the full key (a file made before that key existed)."""
    return [args.settings_p2, args.settings] if base_patch_only(way, budget) else [args.settings]


def run_path(args, way: str, cfg_scale: float, budget: float, seed: int, key: str | None = None) -> Path:
    """Where the run is (key None: where it is saved)."""
    key = key or run_keys(args, way, budget)[0]
    return args.state / "runs" / f"{way}_cfg{cfg_scale:g}_b{budget:.2f}_s{seed}_{key}.npz"


def saved_run_paths(args) -> list[Path]:
    """The run files made under the current settings, one per run (the first of its run_keys found)."""
    chosen: dict[tuple, tuple[int, Path]] = {}
    for path in (args.state / "runs").glob("*.npz"):
        m = RUN_NAME.match(path.stem)
        if m is None:
            continue
        way, budget = m["way"], float(m["budget"])
        keys = run_keys(args, way, budget)
        if m["key"] in keys:
            run = (way, float(m["cfg"]), budget, int(m["seed"]))
            rank = keys.index(m["key"])
            if run not in chosen or rank < chosen[run][0]:
                chosen[run] = (rank, path)
    return sorted(path for _, path in chosen.values())


def is_saved(args, way: str, cfg_scale: float, budget: float, seed: int) -> bool:
    return any(run_path(args, way, cfg_scale, budget, seed, k).is_file() for k in run_keys(args, way, budget))


def save_run(path: Path, result, grid, meta: dict) -> None:
    from flexidit_trt.artifacts import atomic_path

    images, labels = grid
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, result=json.dumps(asdict(result)), meta=json.dumps(meta), images=images, labels=labels)


def load_runs(args):
    """The saved runs made under the current settings, at the CFG scales asked for now."""
    from flexidit_trt.evaluation.results import RunResult

    runs = {}
    for path in saved_run_paths(args):
        with np.load(path) as data:
            result = RunResult(**json.loads(str(data["result"])))
            if result.cfg_scale in scales_of(args, WAYS[result.series]):
                runs[path.stem] = (result, (data["images"], data["labels"]), json.loads(str(data["meta"])))
    return runs


def import_runs(tar: Path, state: Path) -> None:
    (state / "runs").mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if member.isfile() and name.endswith(".npz"):
                (state / "runs" / name).write_bytes(archive.extractfile(member).read())


def export_runs(args) -> None:
    with tarfile.open(args.out / "runs.tar", "w") as archive:
        for path in saved_run_paths(args):
            archive.add(path, arcname=f"runs/{path.name}")


# -- the evaluation -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 logs and writes
        evaluate_all(args, start, lambda line="": None)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "eval_gpu.log", "a") as log:

        def say(line: str = "") -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        evaluate_all(args, start, say)
    return 0


def evaluate_all(args, start: float, say) -> None:
    """The pending runs, on one GPU or, under torchrun, on all of a host's (each rank samples its share of
    every run's chunks; rank 0 gathers, scores, saves and writes)."""
    from flexidit_trt.evaluation.distributed import all_agree, distributed

    with distributed(None) as ctx:
        if args.import_runs and ctx.is_main:
            import_runs(args.import_runs, args.state)
        all_agree(True, ctx)  # the others wait for the import before they list what is pending
        _evaluate(args, start, say, ctx)


def _evaluate(args, start: float, say, ctx) -> None:
    import torch
    from tqdm import tqdm

    from flexidit_trt.evaluation import EvalOptions, Evaluator, Scorer

    args.settings, args.settings_p2 = settings_key(args), settings_key(args, patch2_only=True)
    only = parse_only(args.only)
    ways = [w for w in WAYS.values() if any(wanted(only, w.name, b) for b in w.budgets)]
    pending = pending_runs(args, ways, only)
    on_gpu = ctx.device.type == "cuda"
    say(
        f"== eval_gpu {time.strftime('%Y-%m-%d %H:%M:%S')} on "
        f"{f'{ctx.world} × ' + torch.cuda.get_device_name(ctx.device) if on_gpu else 'cpu'}"
        + (f" ({ctx.world} processes)" if ctx.world > 1 and not on_gpu else "")
    )
    say(f"pending runs: {len(pending)} ({', '.join(_name(*run) for run in pending) or 'none'})")

    if args.report_only:
        if pending:
            say(f"report only: {len(pending)} run(s) asked for are not made")
        pending = []
    deadline = start + args.time_limit - args.reserve
    base = EvalOptions(
        num_samples=args.num_samples,
        steps=args.steps,
        batch_size=args.batch_size,
        cfg_scales=args.cfg_scales or (args.cfg_scale,),
        precision=args.precision,
        fp8=args.fp8,
        compile=args.compile,
        device=str(ctx.device),
        data_dir=args.data,
        cache_dir=args.state / "cache",
        resume_dir=args.state / "chunks",
        inception=args.inception,
        classifier=args.classifier,
        reference_count=args.reference_count,
        deadline=deadline,
        budgets=(1.0,),
    )
    if pending:
        models = load_models(args, ways)
        t0 = time.monotonic()
        scorer = Scorer.load(base, ctx)
        if ctx.is_main:
            say(
                f"reference set ({scorer.reference.count} test images) and networks: "
                f"{time.monotonic() - t0:.1f} s"
            )
        evaluators: dict[str, tuple] = {}  # one per way, made on first use, kept: ways interleave

        def evaluator_for(way: Way):
            if way.name not in evaluators:
                options = replace(
                    base,
                    guidance=way.guidance,
                    cfg_scales=scales_of(args, way),
                    label=way.name,
                    budgets=way.budgets,
                )
                model = models["projection" if way.projection_only else "flexified"]
                evaluator = Evaluator(model, options, ctx, scorer)
                evaluators[way.name] = (
                    evaluator,
                    {**evaluator.meta(), "checkpoint": models["source"], "way": way.title},
                )
            return evaluators[way.name]

        with tqdm(
            total=len(pending) * -(-args.num_samples // args.batch_size),
            desc="eval",
            unit="chunk",
            disable=not ctx.is_main,
        ) as bar:
            for way, scale, budget, seed in pending:
                evaluator, meta = evaluator_for(way)
                t0 = time.monotonic()
                finished, run = evaluator.run(budget, seed, bar, scale)
                if not finished:
                    break
                if not ctx.is_main:
                    continue
                result, grid = run
                save_run(run_path(args, way.name, scale, budget, seed), result, grid, meta)
                say(
                    f"{way.name:>10} cfg {scale:<4g} budget {budget:<4} seed {seed}: FID {result.fid:7.3f}  "
                    f"classifier FD {result.classifier_fd:7.3f}  compute {result.achieved_fraction:.3f}  "
                    f"acc {100 * result.class_accuracy:.1f}%  {result.images_per_second:.0f} img/s/GPU  "
                    f"({time.monotonic() - t0:.0f} s)"
                )
        for evaluator, _ in evaluators.values():
            evaluator.close()
    if not ctx.is_main:
        return
    left = pending_runs(args, ways, only)  # what is still not saved
    write_outputs(args, load_runs(args), left, say)
    say(f"wall time {time.monotonic() - start:.0f} s")
    if left and not args.report_only:
        say(
            f"INCOMPLETE: {len(left)} run(s) left; run the same command again (finished chunks are kept in {args.state})"
        )


def _name(way: Way, scale: float, budget: float, seed: int) -> str:
    return f"{way.name}@cfg{scale:g}/{budget}/s{seed}"


def write_outputs(args, saved: dict, left: list, say) -> None:
    from flexidit_trt.artifacts import write_bytes_atomic, write_json_atomic
    from flexidit_trt.evaluation.report import markdown, plot_files, relative_to_full, report_dict, sheet_png
    from flexidit_trt.evaluation.results import EvalReport

    if not saved:
        say("no finished runs yet")
        return
    report = EvalReport(complete=not left)
    by_way: dict[str, list] = {}
    for _, (result, grid, meta) in saved.items():
        by_way.setdefault(result.series, []).append((result, grid))
        report.meta.setdefault("ways", {})[result.series] = meta.get("way")
        for key in (
            "inception_sha256",
            "protocol",
            "world_size",
            "device",
            "reference",
            "checkpoint",
            "metrics",
        ):
            report.meta.setdefault(key, meta.get(key))
        report.meta.setdefault(
            "options", {k: meta["options"][k] for k in ("num_samples", "steps", "sampler", "seed")}
        )
    # The projection way's budget 1.0 is flexify's run (see the module docstring).
    for result, grid in by_way.get("flexify", []):
        if result.budget == 1.0 and result.seed == args.seed and "projection" in by_way:
            by_way["projection"].append((replace(result, series="projection"), grid))
            report.meta["projection_at_1.0"] = "the flexify way's run: only patch 2 runs at budget 1.0"
    order = {name: i for i, name in enumerate(DISPLAY)}
    for way in sorted(by_way, key=lambda w: order.get(w, 99)):
        for result, grid in sorted(by_way[way], key=lambda rg: (rg[0].cfg_scale, -rg[0].budget, rg[0].seed)):
            report.runs.append(result)
            report.grids[(way, result.cfg_scale, result.budget, result.seed)] = grid
    statics = static_runs(report.runs, args.seed)
    data = report_dict(report)
    # --report-only did not stop at a deadline: it says which runs it lacks in its own words.
    text = markdown(replace(report, complete=True) if args.report_only else report)
    if args.report_only and left:
        text += (
            f"\n**Not made** (`--report-only` samples nothing; run without it to make them): "
            f"{', '.join(_name(*run) for run in left)}.\n"
        )
    text += targets_text(report, statics, args.seed)
    for row, run in zip(data["runs"], report.runs, strict=True):
        for metric in ("fid", "classifier_fd"):  # against the static model, paired by seed
            row[f"{metric}_vs_static"] = relative_to_full(report.runs, run, metric, series="flexify")
    data["base_quality"] = {
        str(c): {
            "fid": r.fid,
            "classifier_fd": r.classifier_fd,
            "class_accuracy": r.class_accuracy,
            "seed": r.seed,
        }
        for c, r in sorted(statics.items())
    } or None
    data["left"] = [_name(*run) for run in left]
    write_json_atomic(args.out / "results.json", data)
    write_bytes_atomic(args.out / "results.md", text.encode())
    for name, png in plot_files(report.runs).items():
        write_bytes_atomic(args.out / name, png)
    several = len({r.cfg_scale for r in report.runs}) > 1
    sheet_seed = {c: r.seed for c, r in statics.items()}  # a scale swept under another seed alone has a row
    rows = [
        (
            (WAYS[way].title if way in WAYS else way)
            + (f", CFG {scale:g}" if several else "")
            + (f", seed {sheet_seed[scale]}" if sheet_seed.get(scale, args.seed) != args.seed else ""),
            [
                (
                    f"b={r.budget:g} ({100 * r.achieved_fraction:.0f}%)",
                    *_first(report.grids[(way, scale, r.budget, r.seed)], 6),
                )
                for r in report.runs
                if (r.series, r.cfg_scale) == (way, scale) and r.seed == sheet_seed.get(scale, args.seed)
            ],
        )
        for way in sorted(by_way, key=lambda w: order.get(w, 99))
        for scale in sorted({r.cfg_scale for r, _ in by_way[way]})
    ]
    rows = [(title, row) for title, row in rows if row]
    write_bytes_atomic(args.out / "samples.png", sheet_png(rows))
    export_runs(args)
    say("")
    say(text)


def _first(grid: tuple[np.ndarray, np.ndarray], per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` images of each class of a grid."""
    images, labels = grid
    keep = [i for i, k in enumerate(labels) if (labels[:i] == k).sum() < per_class]
    return images[keep], labels[keep]


def static_runs(runs: list, seed: int) -> dict:
    """The static model at each CFG scale: flexify at budget 1.0, `seed`'s run, else the first seed's (a
    scale swept under another seed alone)."""
    statics: dict = {}
    for r in runs:
        if r.series == "flexify" and r.budget == 1.0:
            have = statics.get(r.cfg_scale)
            if have is None or (have.seed != seed and (r.seed == seed or r.seed < have.seed)):
                statics[r.cfg_scale] = r
    return statics


def targets_text(report, statics: dict, seed: int) -> str:
    """The base model at each CFG scale (`statics`; its seed named where it is not `seed`), then the targets of each lower budget, on both
    distances, against budget 1.0 of its way, CFG scale and seed (report.relative_to_full; a budget whose
    seed has no budget-1.0 run is left out)."""
    from flexidit_trt.evaluation.report import relative_to_full

    if not statics:
        return ""
    lines = [""]
    for scale, static in sorted(statics.items()):
        lines.append(
            f"Base model (budget 1.0, CFG {scale:g}{'' if static.seed == seed else f', seed {static.seed}'}): "
            f"FID {static.fid:.3f}, classifier FD "
            f"{static.classifier_fd:.3f}, class accuracy {100 * static.class_accuracy:.1f}%."
        )
    lines += [
        "",
        "| way | CFG | budget | seed | FID | vs 1.0 | classifier FD | vs 1.0 | target | met |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in report.runs:
        limit = target(r.cfg_scale, r.budget)
        gaps = tuple(
            relative_to_full(report.runs, r, m, same_seed_only=True) for m in ("fid", "classifier_fd")
        )
        if limit is None or None in gaps:
            continue
        missed = [
            f"{name} by {100 * (gap - limit):.1f} points"
            for name, gap in zip(("FID", "classifier FD"), gaps, strict=True)
            if gap > limit
        ]
        lines.append(
            f"| {r.series} | {r.cfg_scale:g} | {r.budget:g} | {r.seed} | {r.fid:.3f} | {100 * gaps[0]:+.1f}% | "
            f"{r.classifier_fd:.3f} | {100 * gaps[1]:+.1f}% | <= {100 * limit:.0f}% | "
            f"{'no (' + ', '.join(missed) + ')' if missed else 'yes'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
