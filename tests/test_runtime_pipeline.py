"""The pipeline's hot loop against a plain reference loop, batching, the record, and bad inputs (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from array_kernels import philox_normal
from runtime_helpers import reference_samples, rel_error, tiny_model

from flexidit_trt.engines.backend import RunError, RunOptionError
from flexidit_trt.runtime import native, pipeline_from_model

LABELS = [1, 2, 3, 4, 5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pipe(model):
    with pipeline_from_model(model, device="cpu") as p:
        yield p


@pytest.mark.parametrize(
    "guidance, budget, sampler",
    [
        ("cfg", 0.5, "ddpm"),
        ("cfg", 1.0, "ddim"),
        ("weak_to_strong", 0.6, "ddpm"),
        ("weak_to_strong", 0.6, "ddim"),
        ("none", 0.5, "ddpm"),
        ("cfg", 0.5, "flow"),
    ],
)
def test_pipeline_equals_reference_loop(model, pipe, guidance, budget, sampler):
    """fp32 pipeline (batches of 2: three batches, Philox offsets) vs the float64 textbook loop on all 5."""
    ref, patches = reference_samples(
        model, LABELS, budget=budget, steps=40, sampler=sampler, guidance=guidance, seed=7
    )
    result = pipe.generate(
        LABELS, budget=budget, steps=40, sampler=sampler, guidance=guidance, seed=7, batch_size=2
    )
    assert result.samples.dtype == np.float32 and result.samples.shape == (5, 4, 8, 8)
    assert tuple(result.record["plan"]["patch_per_step"]) == patches
    assert len(set(patches)) == (1 if budget == 1.0 else 2)  # both engines ran below budget 1.0
    # Measured 3e-7..6e-7 (fp32 forwards and step vs float64); the noise alone would be O(1) off.
    assert rel_error(result.samples, ref) < 5e-6


def test_samples_do_not_depend_on_batching(pipe):
    one = pipe.generate(LABELS, budget=0.5, steps=30, seed=3, batch_size=5).samples
    split = pipe.generate(LABELS, budget=0.5, steps=30, seed=3, batch_size=2).samples
    single = pipe.generate(LABELS[:1], budget=0.5, steps=30, seed=3).samples  # image 0 of a run, alone
    # Each image's noise is the same; only the forwards' float rounding differs with the batch shape.
    assert rel_error(split, one) < 1e-5
    assert rel_error(single[0], one[0]) < 1e-5
    twins = pipe.generate([LABELS[0]] * 2, budget=0.5, steps=30, seed=3).samples
    assert rel_error(twins[0], one[0]) < 1e-5 and rel_error(twins[1], twins[0]) > 1e-2  # own noise each
    other_seed = pipe.generate(LABELS, budget=0.5, steps=30, seed=4, batch_size=5).samples
    assert rel_error(other_seed, one) > 1e-2


def test_philox_offset_continues_the_flat_stream():
    full = np.empty(64, np.float32)
    philox_normal(full, 5, 9)
    tail = np.empty(24, np.float32)
    philox_normal(tail, 5, 9, offset=40)
    assert np.array_equal(tail, full[40:])
    with pytest.raises(ValueError, match="multiple of 4"):
        native.PhiloxNoise(5, 9, offset=6)


def test_record_matches_the_plan_and_budget(pipe):
    result = pipe.generate([0], budget=0.5, steps=250, seed=0)
    rec = result.record
    from flexidit_trt.diffusion import plan

    expected = plan(0.5, 250, pipe.spec.macs_by_patch, "cfg")
    assert rec["plan"]["patch_per_step"] == list(expected.patch_per_step)
    assert 0.45 <= rec["plan"]["achieved_fraction"] <= 0.50
    assert rec["backend"]["name"] == "torch" and "in memory" in rec["backend"]["why"]
    timing = rec["timing"]
    assert set(timing["by_patch"]) == {"2", "4"}
    assert timing["by_patch"]["4"]["steps"] + timing["by_patch"]["2"]["steps"] == 250
    assert len(timing["per_step_ms"]) == 250 and timing["forward_ms_sum"] <= timing["loop_ms"]
    assert rec["seed"] == 0 and rec["options"]["budget"] == 0.5 and rec["gpu"] == "no GPU"
    assert rec["memory"]["host_peak_rss_bytes"] > 0 and rec["versions"]["numpy"] == np.__version__


def test_generate_reuses_buffers_and_grows_them(pipe):
    pipe.generate([1, 2], budget=1.0, steps=5, seed=0)
    x = pipe.io[2].x
    pipe.generate([1], budget=1.0, steps=5, seed=0)
    assert pipe.io[2].x is x  # no new buffers for a smaller batch
    pipe.generate(list(range(10)) * 7, budget=1.0, steps=2, seed=0, batch_size=70)
    assert pipe.capacity == 70 and pipe.io[2].x.shape[0] == 140


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(labels=[10]), "class label 10 is outside tiny's classes 0..9"),
        (dict(labels=[-1]), "class label -1 is outside"),
        (dict(labels=[]), "no images to generate"),
        (dict(labels=[1.5]), "class labels must be integers"),
        (dict(budget=0.0), r"budget must be a fraction .* in \(0, 1\]"),
        (dict(budget=1.5), r"budget must be a fraction .* in \(0, 1\]"),
        (dict(budget=0.1), "below the lowest reachable budget"),
        (dict(steps=0), "steps"),
        (dict(steps="abc"), "steps"),
        (dict(guidance="strong"), "unknown guidance"),
        (dict(sampler="euler"), "unknown sampler kind"),
        (dict(batch_size=0), "batch size must be a positive int"),
        (dict(seed=-1), "seed must be an int"),
    ],
)
def test_bad_inputs_raise_one_line(pipe, kwargs, match):
    args = dict(labels=[1], budget=0.5, steps=10)
    args.update(kwargs)
    with pytest.raises(RunOptionError, match=match) as info:
        pipe.generate(args.pop("labels"), **args)
    assert "\n" not in str(info.value)


def test_model_without_null_class_refuses_guidance():
    model = tiny_model(class_dropout_prob=0.0)
    with pipeline_from_model(model) as p:
        with pytest.raises(RunError, match="no null class"):
            p.generate([1], steps=5)
        assert p.generate([1], steps=5, guidance="none").samples.shape == (1, 4, 8, 8)


def test_engines_in_memory_only_for_torch(model):
    with pytest.raises(RunError, match="runs built engines: use pipeline_from_workdir"):
        pipeline_from_model(model, backend="ort")
