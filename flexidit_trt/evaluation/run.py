"""The evaluation driver: sample through the runtime's Pipeline at each budget, score against the test set.

    report = evaluate_checkpoint("model.safetensors", EvalOptions(budgets=(1.0, 0.5)))

One run = one (budget, seed). Its N samples have balanced labels (sample i is class i mod 10) and are
made in chunks of `batch_size`: chunk c holds samples [c·B, (c+1)·B) and is sampled with a seed derived
from (seed, c). Under torchrun, rank r takes chunks r, r + W, r + 2W, … (the label-by-label split r::W,
done chunk-wise), so every sample is the same whatever the number of GPUs. Each chunk gives the
classifier's predictions on the 32×32 samples and Inception features of their centre 28×28 crop; these
are gathered to rank 0 (all_gather over NCCL, or gloo on CPU), which computes the metrics and writes.

With `resume_dir`, each finished chunk is saved (atomically) under a key of everything that fixes its
content, and found again by a later call — with any number of GPUs — so a long evaluation can run as a
series of time-limited calls (`deadline`).

    torchrun --nproc_per_node 8 -m flexidit_trt.evaluation.run --budgets 1.0,0.5 --out eval/
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_path, sha256_json, sha256_state_dict
from ..diffusion import plan
from ..errors import FlexiditError, UsageError
from ..training.data import to_uint8
from .inception import FEATURE_DIM, FIDInception, load_inception
from .metrics import (
    class_accuracy,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from .reference_stats import PROTOCOL, ReferenceSet, generated_to_uint8, reference_set

DEFAULT_BUDGETS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.3)
GUIDANCE = ("cfg", "weak_to_strong", "none")
CHUNK_SCHEMA = 1


class EvalError(FlexiditError):
    """The evaluation cannot run for a reason the user can fix (missing data, weights, Inception file)."""


class OptionsError(UsageError, ValueError):
    """Options that cannot be evaluated (a budget outside (0, 1] or below the reachable, no samples…)."""


@dataclass(frozen=True)
class EvalOptions:
    """Everything an evaluation depends on besides the model. `validate()` says what is wrong, if anything."""

    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    num_samples: int = 10_000
    guidance: str = "cfg"  # the planner's names: cfg | weak_to_strong | none
    cfg_scale: float = 1.5  # DiT's FID setting
    steps: int = 250
    sampler: str = "ddpm"
    seed: int = 0
    repeat_seeds: int = 1  # > 1: budget 1.0 again with seeds seed+1, …, to show the seed-to-seed spread
    batch_size: int = 250
    patch_sizes: tuple[int, ...] = (2, 4)
    backend: str = "auto"
    precision: str | None = None  # None: the Pipeline's default
    device: str | None = None  # None: cuda (this rank's GPU) when there is one, else cpu
    label: str | None = None  # the series name in tables and plots (default: the guidance)
    data_dir: Path | None = None
    cache_dir: Path | None = None  # reference features (default ~/.cache/flexidit-trt)
    resume_dir: Path | None = None  # finished chunks; None: nothing kept between calls
    inception: Path | None = None  # a copy of default_1.pt (default: the installed package's)
    classifier: Path | None = None  # default: the committed weights
    reference_count: int | None = None  # test images in the reference (None: all 10,000)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    grid_per_class: int = 8
    progress: bool = True
    deadline: float | None = None  # time.monotonic() after which no new chunk starts

    def validate(self) -> None:
        problems = []
        if not self.budgets:
            problems.append("give at least one budget")
        bad = [b for b in self.budgets if not 0.0 < b <= 1.0]
        if bad:
            problems.append(f"budgets must be fractions of the static compute in (0, 1], got {list(bad)}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be >= 1, got {self.num_samples}")
        elif self.num_samples <= self.pr_k:
            problems.append(
                f"num_samples must be > {self.pr_k} (the k of k-NN precision/recall), got {self.num_samples}"
            )
        if self.reference_count is not None and self.reference_count <= self.pr_k:
            problems.append(
                f"reference_count must be > {self.pr_k} (k-NN precision/recall), got {self.reference_count}"
            )
        if self.guidance not in GUIDANCE:
            problems.append(f"guidance must be one of {', '.join(GUIDANCE)}, got {self.guidance!r}")
        for name in ("steps", "batch_size", "repeat_seeds", "kid_subsets", "kid_subset_size", "pr_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.repeat_seeds > 1 and 1.0 not in self.budgets:
            problems.append("repeat_seeds > 1 repeats budget 1.0: add 1.0 to the budgets")
        if problems:
            raise OptionsError("; ".join(problems))

    @property
    def series(self) -> str:
        return self.label or self.guidance

    def runs(self) -> list[tuple[float, int]]:
        """(budget, seed) of every run, in order: each budget with `seed`, then the seed repeats of 1.0."""
        runs = [(b, self.seed) for b in self.budgets]
        runs += [(1.0, self.seed + i) for i in range(1, self.repeat_seeds)]
        return runs


@dataclass
class RunResult:
    """One (series, budget, seed): the plan's compute and every metric, JSON-ready."""

    series: str
    guidance: str
    cfg_scale: float
    budget: float
    seed: int
    achieved_fraction: float
    plan: str
    steps: int
    num_samples: int
    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    class_accuracy: float
    generate_seconds: float  # sampling time summed over chunks (and GPUs)
    images_per_second: float  # per GPU: num_samples / generate_seconds


@dataclass
class EvalReport:
    """What rank 0 writes: the runs, the provenance, and the samples for the grids (not in the JSON)."""

    runs: list[RunResult] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    grids: dict[tuple[str, float, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    complete: bool = True


# -- distribution ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def distributed(device: str | None = None) -> Iterator[Distributed]:
    """This process's place: rank and world from torchrun's environment (one process without it).

    Joins the process group (NCCL on GPUs, gloo on CPU) if it is not joined yet, and leaves it after.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Distributed(0, 1, _pick_device(device, 0))
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local)
    joined = not dist.is_initialized()
    if joined:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield Distributed(rank, world, dev)
    finally:
        if joined:
            dist.destroy_process_group()


def _pick_device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptionsError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device}: no CUDA device is visible to torch")
    return torch.device(f"cuda:{local_rank}") if dev.type == "cuda" and dev.index is None else dev


def gather_rows(rows: torch.Tensor, ctx: Distributed) -> torch.Tensor | None:
    """Every rank's rows [n_r, ...] concatenated in rank order on rank 0 (CPU); None on the others."""
    if ctx.world == 1:
        return rows.cpu()
    import torch.distributed as dist

    # all_gather needs one shape: pad to the longest, then cut each part back to its length.
    comm = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([rows.shape[0]], device=comm)
    counts = [torch.zeros_like(count) for _ in range(ctx.world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=comm)
    padded[: rows.shape[0]] = rows.to(comm)
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    if not ctx.is_main:
        return None
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=True)]).cpu()


def all_agree(flag: bool, ctx: Distributed) -> bool:
    """True on every rank iff `flag` is true on every rank."""
    if ctx.world == 1:
        return flag
    import torch.distributed as dist

    comm = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=comm)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


# -- the evaluation ----------------------------------------------------------------------------------------
@dataclass
class Scorer:
    """What scores every run, loaded once and shared by every model evaluated in a process: the Inception
    network, the classifier and (rank 0) the reference set."""

    inception: FIDInception
    classifier: torch.nn.Module
    reference: ReferenceSet | None  # rank 0 only

    @classmethod
    def load(cls, options: EvalOptions, ctx: Distributed) -> Scorer:
        from ..training.classifier import load_classifier

        inception = load_inception(options.inception, ctx.device)
        try:
            classifier = load_classifier(options.classifier, ctx.device)
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(str(err)) from None
        reference, error = None, None
        if ctx.is_main:  # the others wait: a failure here must not leave them hanging in a collective
            try:
                reference = reference_set(
                    inception, options.data_dir, options.cache_dir, options.reference_count
                )
            except (FileNotFoundError, ValueError, OSError) as err:
                error = err
        if not all_agree(error is None, ctx):
            raise EvalError(
                f"reference set: {error}" if ctx.is_main else "rank 0 could not make the reference set"
            )
        return cls(inception, classifier, reference)


def evaluate_checkpoint(checkpoint: str | os.PathLike | None, options: EvalOptions) -> EvalReport | None:
    """Load the checkpoint (default: the packaged model) and evaluate it; the report on rank 0, else None."""
    options.validate()
    model, source = load_model(checkpoint, options.patch_sizes)
    with distributed(options.device) as ctx:
        report = evaluate(model, options, ctx)
    if report is not None:
        report.meta["checkpoint"] = source
    return report


def load_model(checkpoint: str | os.PathLike | None, patch_sizes: tuple[int, ...]):
    """The model with at least `patch_sizes`, and where it came from; EvalError when it lacks one."""
    from ..model import CheckpointError, load_checkpoint

    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    try:
        model = load_checkpoint(path, patch_sizes=patch_sizes)
    except CheckpointError as err:
        raise EvalError(str(err)) from None
    missing = sorted(set(patch_sizes) - set(model.patch_sizes))
    if missing:
        raise EvalError(
            f"checkpoint {path} has patch sizes {list(model.patch_sizes)}, not the requested "
            f"{', '.join(map(str, missing))}: flexify it to them (flexidit-trt flexify --checkpoint {path} "
            f"--patch-sizes {','.join(map(str, patch_sizes))}) or ask for the sizes it has (--patch-sizes)"
        )
    return model.eval().requires_grad_(False), str(path)


def default_checkpoint() -> Path:
    """The packaged default model."""
    from ..runtime.default_model import default_checkpoint

    try:
        return default_checkpoint()
    except FileNotFoundError as err:
        raise EvalError(str(err)) from None


def evaluate(model, options: EvalOptions, ctx: Distributed | None = None) -> EvalReport | None:
    """Evaluate `model` at every run of `options`; the report on rank 0 (complete=False if the deadline
    stopped it: run it again with the same resume_dir to go on), None on the other ranks."""
    evaluator = Evaluator(model, options, ctx)
    report = EvalReport(meta=evaluator.meta())
    total_chunks = len(options.runs()) * evaluator.chunks_per_run
    with evaluator, evaluator.progress_bar(total_chunks) as bar:
        for budget, seed in options.runs():
            finished, run = evaluator.run(budget, seed, bar)
            if not finished:  # the same on every rank
                report.complete = False
                break
            if run is not None:  # rank 0
                result, grid = run
                report.runs.append(result)
                report.grids.setdefault((options.series, budget, seed), grid)
    return report if evaluator.ctx.is_main else None


class Evaluator:
    """One model under one set of options: its Pipeline, its plans, and `run(budget, seed)`.

    Several evaluators (models or guidance kinds) can share one Scorer; every rank makes the same calls.
    """

    def __init__(
        self, model, options: EvalOptions, ctx: Distributed | None = None, scorer: Scorer | None = None
    ):
        from ..engines.options import EngineOptions
        from ..runtime import pipeline_from_model

        options.validate()
        self.ctx = ctx or Distributed(0, 1, _pick_device(options.device, 0))
        missing = sorted(set(options.patch_sizes) - set(model.patch_sizes))
        if missing:
            raise EvalError(f"the model has patch sizes {list(model.patch_sizes)}, not {missing}")
        # The Pipeline plans over every patch size the model has; so do we, before any sampling, so that
        # an unreachable budget fails at once.
        self.macs = {p: model.macs(p) for p in model.patch_sizes}
        try:
            self.plans = {
                b: plan(b, options.steps, self.macs, options.guidance) for b in set(options.budgets) | {1.0}
            }
        except ValueError as err:
            raise OptionsError(
                f"{err} (at {options.steps} steps, patch sizes {list(model.patch_sizes)})"
            ) from None
        self.model = model
        self.options = options
        self.scorer = scorer or Scorer.load(options, self.ctx)
        self.model_sha = sha256_state_dict(model.state_dict())
        self.pipe = pipeline_from_model(
            model,
            backend=options.backend,
            device=str(self.ctx.device),
            engine=EngineOptions(precision=options.precision, max_batch=options.batch_size),
        )

    @property
    def chunks_per_run(self) -> int:
        return math.ceil(self.options.num_samples / self.options.batch_size)

    def progress_bar(self, total: int):
        from tqdm import tqdm

        return tqdm(
            total=total, desc="eval", unit="chunk", disable=not (self.options.progress and self.ctx.is_main)
        )

    def plan_for(self, budget: float):
        if budget not in self.plans:
            self.plans[budget] = plan(budget, self.options.steps, self.macs, self.options.guidance)
        return self.plans[budget]

    def close(self) -> None:
        self.pipe.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, budget: float, seed: int, bar=None):
        """One (budget, seed): this rank's chunks, gathered. Returns (finished, (result, grid) on rank 0
        else None); finished is False on every rank when any rank reached the deadline."""
        options, ctx = self.options, self.ctx
        run_plan = self.plan_for(budget)
        n, b = options.num_samples, options.batch_size
        # The budget matters only through its plan: budgets with the same schedule share their chunks.
        run_key = sha256_json(
            {
                "schema": CHUNK_SCHEMA,
                "model": self.model_sha,
                "inception": self.scorer.inception.sha256,
                "protocol": PROTOCOL,
                "plan": list(run_plan.patch_per_step),
                "seed": seed,
                **{
                    k: getattr(options, k)
                    for k in ("steps", "sampler", "guidance", "cfg_scale", "batch_size")
                },
                # What actually ran: the resolved backend and precision, and the kind of device.
                "backend": self.pipe.selection.backend,
                "precision": self.pipe.precision,
                "device": ctx.device.type,
            }
        )
        folder = Path(options.resume_dir) / run_key[:20] if options.resume_dir is not None else None
        if bar is not None:
            bar.set_postfix_str(f"{options.series} budget {budget} seed {seed}")
        parts, stopped = [], False
        for c in range(ctx.rank, self.chunks_per_run, ctx.world):
            # Chunk c holds samples [c·b, min(n, (c+1)·b)): a saved one is reused when its size matches.
            lo, hi = c * b, min(n, (c + 1) * b)
            part = _read_chunk(folder, c, hi - lo)
            if part is None:
                if options.deadline is not None and time.monotonic() > options.deadline:
                    stopped = True
                    break
                part = self._make_chunk(lo, hi, seed, c, budget, run_plan)
                _write_chunk(folder, c, part)
            parts.append(part)
            if bar is not None:
                bar.update(min(ctx.world, self.chunks_per_run - c))
        if not all_agree(not stopped, ctx):
            return False, None
        local = {
            k: np.concatenate([p[k] for p in parts]) if parts else None
            for k in ("index", "predicted", "features")
        }
        index = gather_rows(_rows(local["index"], torch.int64, 0), ctx)
        predicted = gather_rows(_rows(local["predicted"], torch.int64, 0), ctx)
        features = gather_rows(_rows(local["features"], torch.float32, FEATURE_DIM), ctx)
        seconds = gather_rows(
            torch.tensor([sum(float(p["seconds"]) for p in parts)], dtype=torch.float64), ctx
        )
        if not ctx.is_main:
            return True, None
        order = torch.argsort(index)
        index, predicted, features = index[order].numpy(), predicted[order].numpy(), features[order].numpy()
        result = self._score(budget, seed, run_plan, index, predicted, features, float(seconds.sum()))
        return True, (result, _grid_samples(parts, options.grid_per_class))

    def meta(self) -> dict:
        options, ctx = self.options, self.ctx
        device = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
        meta = {
            "model": {"config": json.loads(self.model.config.to_json()), "sha256": self.model_sha},
            "pipeline": {"backend": self.pipe.selection.backend, "precision": self.pipe.precision},
            "inception_sha256": self.scorer.inception.sha256,
            "protocol": PROTOCOL,
            "world_size": ctx.world,
            "device": device,
            "options": _jsonable(asdict(replace(options, deadline=None, progress=True))),
            "metrics": {
                "fid": "Fréchet distance of Inception pool3 statistics (float64; tr (S_r^½ S_g S_r^½)^½ by numpy eigh)",
                "kid": f"unbiased MMD², cubic kernel, {options.kid_subsets} subsets of <= {options.kid_subset_size}",
                "precision_recall": f"Kynkäänniemi et al. 2019, k={options.pr_k}, on the Inception features",
                "class_accuracy": "the classifier's argmax equals the label the sample was generated for",
                "images": "generated: the centre 28x28 of the 32x32 sample as uint8; real: the 28x28 test images",
            },
        }
        if self.scorer.reference is not None:
            meta["reference"] = self.scorer.reference.key
        return meta

    def _make_chunk(self, lo: int, hi: int, seed: int, chunk: int, budget: float, run_plan) -> dict:
        labels = np.arange(lo, hi) % 10
        start = time.perf_counter()
        samples = _sample(self.pipe, labels, budget, _chunk_seed(seed, chunk), self.options)
        seconds = time.perf_counter() - start
        images = torch.as_tensor(samples, dtype=torch.float32)
        inception, classifier = self.scorer.inception, self.scorer.classifier
        predicted = classifier.classify(images.to(inception.device)).argmax(dim=1).cpu().numpy()
        features = inception.features(generated_to_uint8(images)).cpu().numpy()
        return {
            "index": np.arange(lo, hi, dtype=np.int64),
            "labels": labels.astype(np.int64),
            "predicted": predicted.astype(np.int64),
            "features": features.astype(np.float32),
            "samples": to_uint8(images),  # uint8 [n, 32, 32] for the grids
            "seconds": np.float64(seconds),
            "plan": np.asarray(run_plan.patch_per_step, dtype=np.int64),
            "seed": np.int64(seed),
        }

    def _score(self, budget, seed, run_plan, index, predicted, features, seconds) -> RunResult:
        options, ref = self.options, self.scorer.reference
        device = self.scorer.inception.device
        kid = kernel_inception_distance(
            features, ref.features, options.kid_subsets, options.kid_subset_size, seed=seed, device=device
        )
        pr = precision_recall(features, ref.features, k=options.pr_k, device=device)
        return RunResult(
            series=options.series,
            guidance=options.guidance,
            cfg_scale=options.cfg_scale,
            budget=budget,
            seed=seed,
            achieved_fraction=run_plan.achieved_fraction,
            plan=run_plan.describe(),
            steps=options.steps,
            num_samples=int(features.shape[0]),
            fid=frechet_distance(feature_stats(features), ref.stats),
            kid=kid.mean,
            kid_std=kid.std,
            precision=pr.precision,
            recall=pr.recall,
            class_accuracy=class_accuracy(predicted, index % 10),
            generate_seconds=seconds,
            images_per_second=features.shape[0] / seconds if seconds > 0 else float("nan"),
        )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def _rows(array: np.ndarray | None, dtype: torch.dtype, width: int) -> torch.Tensor:
    if array is None:
        return torch.zeros((0, width) if width else (0,), dtype=dtype)
    return torch.as_tensor(array, dtype=dtype)


def _sample(pipe, labels: np.ndarray, budget: float, seed: int, options: EvalOptions) -> np.ndarray:
    """fp32 [n, 1, 32, 32] samples in [-1, 1] for `labels`, through the runtime's Pipeline."""
    result = pipe.generate(
        labels,
        budget=budget,
        steps=options.steps,
        sampler=options.sampler,
        guidance=options.guidance,
        cfg_scale=options.cfg_scale,
        seed=seed,
        batch_size=options.batch_size,
        progress=False,
    )
    return np.asarray(result.samples, dtype=np.float32)


def _chunk_seed(seed: int, chunk: int) -> int:
    # Independent streams per chunk, fixed by (seed, chunk) alone: the same on any number of GPUs.
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def _read_chunk(folder: Path | None, chunk: int, expected: int) -> dict | None:
    if folder is None:
        return None
    path = folder / f"chunk{chunk:05d}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # absent or damaged: make it again
    return part if part["index"].shape[0] == expected else None


def _write_chunk(folder: Path | None, chunk: int, part: dict) -> None:
    if folder is None:
        return
    with atomic_path(folder / f"chunk{chunk:05d}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **part)


def _grid_samples(parts: list[dict], per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` samples of each class from rank 0's first chunks (chunk 0 holds every class)."""
    chosen: dict[int, list[np.ndarray]] = {}
    for part in parts:
        for image, label in zip(part["samples"], part["labels"], strict=True):
            bucket = chosen.setdefault(int(label), [])
            if len(bucket) < per_class:
                bucket.append(image)
        if all(len(chosen.get(k, [])) >= per_class for k in range(10)):
            break
    labels = sorted(chosen)
    images = np.stack([img for k in labels for img in chosen[k]])
    return images, np.array([k for k in labels for _ in chosen[k]])


def main(argv: list[str] | None = None) -> None:
    """`python -m flexidit_trt.evaluation.run …` (e.g. under torchrun): the `flexidit-trt eval` command."""
    from ..cli.eval import eval_command

    eval_command.main(args=argv, prog_name="flexidit_trt.evaluation.run")


if __name__ == "__main__":
    main()
