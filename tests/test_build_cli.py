"""`flexidit-trt build` from the command line: output lines, the skip line, reuse, and bad inputs as
one-line errors without tracebacks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flexidit_trt.cli import main
from flexidit_trt.engines import trt_status

TRT_HERE = trt_status().available


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint(lora_rank=2, seed=5)


def invoke(*args):
    return CliRunner().invoke(main, ["build", *map(str, args)])


def assert_clean_error(result, code: int, message: str):
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.skipif(TRT_HERE, reason="TensorRT is installed here: the skip line does not apply")
def test_build_exports_validates_and_skips_engines(tmp_path, checkpoint):
    result = invoke("--checkpoint", checkpoint, "--workdir", tmp_path, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    plan, *lines = result.output.splitlines()
    assert plan.startswith(f"dit_s (checkpoint {checkpoint}): export and validate 2 ONNX graph(s) (p2, p4)")
    assert lines[0] == f"dit_s: weights from checkpoint {checkpoint}"
    assert lines[1].startswith(f"p2  {tmp_path / 'export/dit_s/p2.onnx'}  fp32  16 tokens")
    assert "exported in" in lines[1] and "(new)" in lines[1] and "ORT vs PyTorch max abs" in lines[1]
    assert lines[2].startswith("p4  ")
    assert lines[3] == (
        "engines: skipped (the tensorrt Python package is not installed); the ONNX graphs are ready, "
        "pass --require-trt to make this an error"
    )
    assert len(lines) == 4
    again = invoke("--checkpoint", checkpoint, "--workdir", tmp_path, "--precision", "fp32")
    assert again.exit_code == 0 and again.output.count("reused (same checkpoint)") == 2


@pytest.mark.skipif(TRT_HERE, reason="TensorRT is installed here")
def test_require_trt_is_an_error(tmp_path, checkpoint):
    result = invoke("--checkpoint", checkpoint, "--workdir", tmp_path, "--require-trt")
    assert_clean_error(result, 1, "Error: --require-trt: cannot build TensorRT engines: the tensorrt")
    assert not (tmp_path / "export").exists()


def test_random_weights_are_announced(tmp_path):
    # dit_s at 64 px keeps this fast; the full-size default is dit_xl at 256 px.
    result = invoke(
        "--model",
        "dit_s",
        "--image-size",
        "64",
        "--patch-sizes",
        "4",
        "--workdir",
        tmp_path,
        "--precision",
        "bf16",
        "--fp32-residual",
    )
    assert result.exit_code == 0, result.output
    plan, report = result.output.splitlines()[:2]  # announced up front, in the plan line, and in the report
    assert plan.startswith("dit_s (seeded random weights (seed 0; no --checkpoint given)): export")
    assert report == "dit_s: weights from seeded random weights (seed 0; no --checkpoint given)"
    entry = json.loads((tmp_path / "export/dit_s/manifest.json").read_text())["graphs"]["4"]
    assert (entry["precision"], entry["fp32_residual"], entry["config"]["depth"]) == ("bf16", True, 12)


@pytest.mark.parametrize("sizes", ["1,0", "a,2", "", "-4"])
def test_bad_batch_sizes(tmp_path, sizes):
    result = invoke("--model", "dit_s", "--batch-sizes", sizes, "--workdir", tmp_path)
    assert_clean_error(result, 2, "expected comma-separated positive integers")
    assert not (tmp_path / "export").exists()


def test_unknown_model(tmp_path):
    """Bad usage exits 2 in every command (info too: test_cli_info.py)."""
    assert_clean_error(invoke("--model", "dit_q", "--workdir", tmp_path), 2, "unknown model config 'dit_q'")


def test_missing_patch_size_in_checkpoint(tmp_path, checkpoint):
    result = invoke("--checkpoint", checkpoint, "--patch-sizes", "2,8", "--workdir", tmp_path)
    assert_clean_error(result, 2, "has patch sizes [2, 4]; 8 requested")
    assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--image-size", "0"), "image size 0 is not a positive multiple of 8"),
        (("--image-size", "-64"), "image size -64 is not a positive multiple of 8"),
        (("--opset", "25"), "opset 25 is not supported"),
        (("--image-size", "72", "--patch-sizes", "2,4"), "not divisible by patch size 4"),
    ],
)
def test_bad_usage_exits_2_before_writing(tmp_path, args, message):
    assert_clean_error(invoke("--model", "dit_s", *args, "--workdir", tmp_path / "wd"), 2, message)
    assert not (tmp_path / "wd").exists()


def test_failures_exit_1(tmp_path):
    """A checkpoint that cannot be used is a failure of the work (1), not of the command line (2)."""
    path = tmp_path / "empty.pt"
    path.touch()
    assert_clean_error(invoke("--checkpoint", path, "--workdir", tmp_path / "wd"), 1, "is empty (0 bytes)")


def test_validation_output_says_whether_it_ran_now(tmp_path, checkpoint):
    args = ("--checkpoint", checkpoint, "--workdir", tmp_path, "--precision", "fp32", "--patch-sizes", "2")
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert first.output.count("(new)  validated now: ORT vs PyTorch max abs") == 1
    again = invoke(*args)
    assert again.output.count("reused (same checkpoint)  validation from the manifest (") == 1, again.output
    assert "validated now" not in again.output
    revalidated = invoke(*args, "--revalidate")
    assert revalidated.output.count("reused (same checkpoint)  revalidated now: ORT vs PyTorch") == 1


def test_removed_graphs_of_other_settings_are_listed(tmp_path, checkpoint):
    first = invoke(
        "--checkpoint", checkpoint, "--workdir", tmp_path, "--precision", "fp32", "--patch-sizes", "4"
    )
    assert first.exit_code == 0, first.output
    result = invoke("--checkpoint", checkpoint, "--workdir", tmp_path, "--patch-sizes", "2")
    assert result.exit_code == 0, result.output
    removed = [line for line in result.output.splitlines() if line.split()[1] == "removed"]
    assert removed == [
        f"p4  removed {tmp_path / 'export/dit_s/p4.onnx'} (made with other settings than this build: "
        "changed precision fp32->fp16)"
    ]


def test_missing_checkpoint_and_unwritable_workdir(tmp_path):
    assert_clean_error(invoke("--checkpoint", tmp_path / "nope.pt"), 2, "does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("--model", "dit_s", "--image-size", "64", "--workdir", blocker / "sub")
    assert_clean_error(result, 1, f"cannot write to {blocker / 'sub'}")
