"""The evaluation driver: sample through the runtime's Pipeline at each budget, score against the test set.

    report = evaluate_checkpoint("model.safetensors", EvalOptions(budgets=(1.0, 0.5)))

One run = one (CFG scale, budget, seed): every budget at every scale, then the seed repeats. Its N
samples have balanced labels (sample i is class i mod 10) and are made in chunks of `batch_size`: chunk
c holds samples [c·B, (c+1)·B) and is sampled with a seed derived from (seed, c). Under torchrun, rank r
takes chunks r, r + W, r + 2W, … (the label-by-label split r::W, done chunk-wise), so every sample is
the same whatever the number of GPUs. Each chunk gives, from one classifier forward on the 32×32
samples, its predictions and penultimate features, and the Inception features of their centre 28×28
crop; these are gathered to rank 0 (all_gather over NCCL, or gloo on CPU), which computes the metrics
and writes.

With `resume_dir`, each finished chunk is saved (atomically) under a key of everything that fixes its
content, and found again by a later call — with any number of GPUs — so a long evaluation can run as a
series of time-limited calls (`deadline`).

    torchrun --nproc_per_node 8 -m flexidit_trt eval --budgets 1.0,0.5 --cfg-scales 1.5,4.0 --out eval/
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..artifacts import sha256_json, sha256_state_dict
from ..diffusion import Plan, plan
from ..model import FlexiDiT
from ..plotting import pyplot
from ..training.data import to_uint8
from .chunks import CHUNK_SCHEMA, chunk_seed, grid_samples, read_chunk, write_chunk
from .distributed import Distributed, all_agree, distributed, gather_rows, pick_device
from .inception import FEATURE_DIM
from .options import EvalError, EvalOptions, OptionsError
from .reference_stats import PROTOCOL, generated_to_uint8
from .results import EvalReport, RunResult
from .scoring import RunSamples, Scorer

if TYPE_CHECKING:
    from tqdm import tqdm


def evaluate_checkpoint(checkpoint: str | os.PathLike | None, options: EvalOptions) -> EvalReport | None:
    """Load the checkpoint (default: the packaged model) and evaluate it; the report on rank 0, else None."""
    model, source = load_model(checkpoint, options.patch_sizes)
    with distributed(options.device) as ctx:
        report = evaluate(model, options, ctx)
    if report is not None:
        report.meta["checkpoint"] = source
    return report


def load_model(checkpoint: str | os.PathLike | None, patch_sizes: tuple[int, ...]) -> tuple[FlexiDiT, str]:
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
    from ..default_model import default_checkpoint

    try:
        return default_checkpoint()
    except FileNotFoundError as err:
        raise EvalError(str(err)) from None


def evaluate(model: FlexiDiT, options: EvalOptions, ctx: Distributed | None = None) -> EvalReport | None:
    """Evaluate `model` at every run of `options`; the report on rank 0 (complete=False if the deadline
    stopped it: run it again with the same resume_dir to go on), None on the other ranks."""
    evaluator = Evaluator(model, options, ctx)
    report = EvalReport(meta=evaluator.meta())
    total_chunks = len(options.runs()) * evaluator.chunks_per_run
    with evaluator, evaluator.progress_bar(total_chunks) as bar:
        for cfg_scale, budget, seed in options.runs():
            finished, run = evaluator.run(budget, seed, bar, cfg_scale)
            if not finished:  # the same on every rank
                report.complete = False
                break
            if run is not None:  # rank 0
                result, grid = run
                report.runs.append(result)
                report.grids.setdefault((options.series, cfg_scale, budget, seed), grid)
    return report if evaluator.ctx.is_main else None


class Evaluator:
    """One model under one set of options: its Pipeline, its plans, and `run(budget, seed, cfg_scale)`.

    Several evaluators (models or guidance kinds) can share one Scorer; every rank makes the same calls.
    """

    def __init__(
        self,
        model: FlexiDiT,
        options: EvalOptions,
        ctx: Distributed | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        from ..engines.options import EngineOptions, resolve_precision
        from ..model.fp8 import check_fp8
        from ..runtime import pipeline_from_model

        self.ctx = ctx or Distributed(0, 1, pick_device(options.device, 0))
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
        device = str(self.ctx.device)
        precision = resolve_precision(options.precision, device)
        if options.fp8 and (why := check_fp8(precision, device)):  # before minutes of reference statistics
            default = (
                f" ({precision} is the default on {device}: add --precision bf16)"
                if options.precision is None
                else ""
            )
            raise OptionsError(f"--fp8: {why}{default}")
        if self.ctx.is_main:
            pyplot("eval")  # the report's plots: a missing matplotlib fails now, not after the sampling
        self.model = model
        self.options = options
        self.scorer = scorer or Scorer.load(options, self.ctx)
        self.model_sha = sha256_state_dict(model.state_dict())
        self.pipe = pipeline_from_model(
            model,
            backend=options.backend,
            device=device,
            engine=EngineOptions(
                precision=options.precision,
                max_batch=options.batch_size,
                fp8=options.fp8,
                compile=options.compile,
            ),
        )

    @property
    def chunks_per_run(self) -> int:
        return math.ceil(self.options.num_samples / self.options.batch_size)

    def progress_bar(self, total: int) -> tqdm:
        from tqdm import tqdm

        return tqdm(
            total=total, desc="eval", unit="chunk", disable=not (self.options.progress and self.ctx.is_main)
        )

    def plan_for(self, budget: float) -> Plan:
        if budget not in self.plans:
            self.plans[budget] = plan(budget, self.options.steps, self.macs, self.options.guidance)
        return self.plans[budget]

    def close(self) -> None:
        self.pipe.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(
        self, budget: float, seed: int, bar: tqdm | None = None, cfg_scale: float | None = None
    ) -> tuple[bool, tuple[RunResult, tuple[np.ndarray, np.ndarray]] | None]:
        """One (budget, seed) at `cfg_scale` (default: the options' first): this rank's chunks, gathered.
        Returns (finished, (result, grid) on rank 0 else None); finished is False on every rank when any
        rank reached the deadline."""
        options, ctx = self.options, self.ctx
        cfg_scale = options.cfg_scales[0] if cfg_scale is None else float(cfg_scale)
        run_plan = self.plan_for(budget)
        n, b = options.num_samples, options.batch_size
        # The budget matters only through its plan: budgets with the same schedule share their chunks.
        run_key = sha256_json(
            {
                "schema": CHUNK_SCHEMA,
                "model": self.model_sha,
                "inception": self.scorer.inception.sha256,
                "classifier": self.scorer.classifier_sha256,
                "protocol": PROTOCOL,
                "plan": list(run_plan.patch_per_step),
                "seed": seed,
                "cfg_scale": cfg_scale,
                **{k: getattr(options, k) for k in ("steps", "sampler", "guidance", "batch_size")},
                # What actually ran: the resolved backend and precision, and the kind of device.
                "backend": self.pipe.selection.backend,
                "precision": self.pipe.precision,
                "device": ctx.device.type,
                **({"fp8": True} if options.fp8 else {}),  # absent when off: earlier keys stay valid
                **({"compile": True} if options.compile else {}),
            }
        )
        folder = Path(options.resume_dir) / run_key[:20] if options.resume_dir is not None else None
        if bar is not None:
            bar.set_postfix_str(f"{options.series} cfg {cfg_scale:g} budget {budget} seed {seed}")
        parts, stopped = [], False
        for c in range(ctx.rank, self.chunks_per_run, ctx.world):
            # Chunk c holds samples [c·b, min(n, (c+1)·b)): a saved one is reused when its size matches.
            lo, hi = c * b, min(n, (c + 1) * b)
            part = read_chunk(folder, c, hi - lo)
            if part is None:
                if options.deadline is not None and time.monotonic() > options.deadline:
                    stopped = True
                    break
                part = self._make_chunk(lo, hi, seed, c, budget, cfg_scale, run_plan)
                write_chunk(folder, c, part)
            parts.append(part)
            if bar is not None:
                bar.update(min(ctx.world, self.chunks_per_run - c))
        if not all_agree(not stopped, ctx):
            return False, None
        # Every per-sample array goes to rank 0 the same way: (key, dtype, row width; 0 for scalars).
        columns = {
            "index": (torch.int64, 0),
            "predicted": (torch.int64, 0),
            "features": (torch.float32, FEATURE_DIM),
            "classifier_features": (torch.float32, self.scorer.classifier.feature_dim),
        }
        gathered = {
            k: gather_rows(_rows(np.concatenate([p[k] for p in parts]) if parts else None, dtype, width), ctx)
            for k, (dtype, width) in columns.items()
        }
        seconds = gather_rows(
            torch.tensor([sum(float(p["seconds"]) for p in parts)], dtype=torch.float64), ctx
        )
        if not ctx.is_main:
            return True, None
        order = torch.argsort(gathered["index"])
        rows = {k: v[order].numpy() for k, v in gathered.items()}
        samples = RunSamples(
            index=rows["index"],
            predicted=rows["predicted"],
            inception=rows["features"],
            classifier=rows["classifier_features"],
            seconds=float(seconds.sum()),
        )
        result = self.scorer.score(options, cfg_scale, budget, seed, run_plan, samples)
        return True, (result, grid_samples(parts, options.grid_per_class))

    def meta(self) -> dict:
        options, ctx = self.options, self.ctx
        device = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
        meta = {
            "model": {"config": json.loads(self.model.config.to_json()), "sha256": self.model_sha},
            "pipeline": {
                "backend": self.pipe.selection.backend,
                "precision": self.pipe.precision,
                "fp8": options.fp8,
                "compile": options.compile,
            },
            "inception_sha256": self.scorer.inception.sha256,
            "classifier_sha256": self.scorer.classifier_sha256,
            "protocol": PROTOCOL,
            "world_size": ctx.world,
            "device": device,
            "options": _jsonable(asdict(replace(options, deadline=None, progress=True))),
            "metrics": {
                "fid": "Fréchet distance of Inception pool3 statistics (float64; tr (S_r^½ S_g S_r^½)^½ by numpy eigh)",
                "kid": f"unbiased MMD², cubic kernel, {options.kid_subsets} subsets of <= {options.kid_subset_size}",
                "precision_recall": f"Kynkäänniemi et al. 2019, k={options.pr_k}, on the Inception features",
                "classifier_fd": (
                    "Fréchet distance (as fid) of the classifier's penultimate features (the input of its "
                    f"final linear layer, {self.scorer.classifier.feature_dim} values): the 32x32 samples as "
                    "they come out of the sampler against the test images padded to 32x32"
                ),
                "class_accuracy": "the classifier's argmax equals the label the sample was generated for",
                "cfg_scale": "the guidance scale of the run (a guidance sweep runs every budget at each)",
                "images": "generated: the centre 28x28 of the 32x32 sample as uint8; real: the 28x28 test images",
            },
        }
        if self.scorer.reference is not None:
            meta["reference"] = self.scorer.reference.key
        if self.scorer.classifier_reference is not None:
            meta["classifier_reference"] = self.scorer.classifier_reference.key
        return meta

    def _make_chunk(
        self, lo: int, hi: int, seed: int, chunk: int, budget: float, cfg_scale: float, run_plan
    ) -> dict:
        labels = np.arange(lo, hi) % 10
        start = time.perf_counter()
        samples = _sample(self.pipe, labels, budget, cfg_scale, chunk_seed(seed, chunk), self.options)
        seconds = time.perf_counter() - start
        images = torch.as_tensor(samples, dtype=torch.float32)
        classifier_features, predicted = self.scorer.classify(images)
        features = self.scorer.inception.features(generated_to_uint8(images)).cpu().numpy()
        return {
            "index": np.arange(lo, hi, dtype=np.int64),
            "labels": labels.astype(np.int64),
            "predicted": predicted.astype(np.int64),
            "features": features.astype(np.float32),
            "classifier_features": classifier_features.astype(np.float32),
            "samples": to_uint8(images),  # uint8 [n, 32, 32] for the grids
            "seconds": np.float64(seconds),
            "plan": np.asarray(run_plan.patch_per_step, dtype=np.int64),
            "seed": np.int64(seed),
        }


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


def _sample(
    pipe, labels: np.ndarray, budget: float, cfg_scale: float, seed: int, options: EvalOptions
) -> np.ndarray:
    """fp32 [n, 1, 32, 32] samples in [-1, 1] for `labels`, through the runtime's Pipeline."""
    result = pipe.generate(
        labels,
        budget=budget,
        steps=options.steps,
        sampler=options.sampler,
        guidance=options.guidance,
        cfg_scale=cfg_scale,
        seed=seed,
        batch_size=options.batch_size,
        progress=False,
    )
    return np.asarray(result.samples, dtype=np.float32)
