"""The docs: the README's set-up lines render as two lines, its examples run as written and print what
their comments say, the planner's docstring example is real output, and benchmarks/NOTES.md keeps
predictions apart from results."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_block_after(text: str, heading: str) -> str:
    start = text.index("```python\n", text.index(heading)) + len("```python\n")
    return text[start : text.index("```\n", start)]


def test_readme_setup_lines_are_a_code_block_under_the_title():
    lines = README.splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2] == "```" and lines[5] == "```", lines[:6]
    assert all(line.startswith("python3 -m venv .venv && ") for line in lines[3:5])
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert lines[4] == ci  # the README says CI runs exactly its second line


def test_readme_first_line_runs_the_default_model_at_half_budget():
    # The first set-up line installs and runs `run --budget 0.5` on the embedded default model.
    assert README.splitlines()[3].endswith("&& flexidit-trt run --budget 0.5")


def printed_by(code: str, namespace: dict) -> str:
    """What a README example prints, run as written in `namespace`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own example)
    return out.getvalue().strip()


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_pipeline_example_runs_as_written():
    code = code_block_after(README, "## Running: `flexidit-trt run` and the `Pipeline`")
    printed = re.search(r"\n# (\(.+)", code).group(1)
    assert printed_by(code, {}) == printed  # the comment is the real output


@pytest.mark.usefixtures("one_torch_thread")  # 100 forwards on tiny matrices: ~2 s on one thread
def test_readme_sampling_example_runs_as_written():
    code = code_block_after(README, "## Sampling, guidance and the compute budget")
    printed = re.search(r"print\(p\.describe\(\)\)  # (.+)", code).group(1)
    namespace: dict = {}
    assert printed_by(code, namespace) == printed  # the comment is the real output
    x, model = namespace["x"], namespace["model"]
    assert not model.training and not x.requires_grad  # eval() and no_grad(): no autograd graph grows
    assert x.shape == (4, 4, 8, 8) and bool(torch.isfinite(x).all())


def test_readme_and_planner_docstring_quote_real_plans():
    from flexidit_trt.diffusion import plan
    from flexidit_trt.diffusion.planner import Plan
    from flexidit_trt.model import forward_macs, get_config

    xl = get_config("dit_xl")
    line = plan(0.5, 250, {p: forward_macs(xl, p) for p in xl.patch_sizes}, guidance="cfg").describe()
    assert line in " ".join(inspect.getdoc(Plan.describe).split())
    assert f"`{line}`" in " ".join(README.split())


def test_notes_vs_fp32_column_says_random_weights_have_no_outliers():
    from flexidit_trt.model import FlexiDiT

    std = inspect.signature(FlexiDiT.randomize_).parameters["std"].default
    assert std == 0.02  # what "random N(0, 0.02²)" refers to
    notes = " ".join((ROOT / "benchmarks/NOTES.md").read_text().split())
    assert "random N(0, 0.02²): their activations have none of the outliers of a trained DiT" in notes
    assert "fp16 overflow, the reason for the fp32 residual, cannot show in this column" in notes
    script = (ROOT / "benchmarks/export_xl.py").read_text()
    assert "where fp16 overflow would show" not in script and "so fp16 overflow cannot show" in script


def test_notes_expectations_are_predictions_not_earlier_results():
    notes = " ".join((ROOT / "benchmarks/NOTES.md").read_text().split())
    # Each "Expected ..." statement up to the end of its sentence (the header's quoted "Expected" defines it).
    expected = re.findall(r'(?<!")\bExpected\b.*?(?:\.(?=\s)|$)', notes)
    assert len(expected) >= 2, expected
    for sentence in expected:
        assert not re.search(r"\bas seen\b|\bhad (already )?seen\b|\bearlier\b", sentence), sentence
