"""Classifier-free and weak-to-strong guidance against the formula written out directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexidit_trt.diffusion import REFERENCE_GUIDED_CHANNELS, cfg_labels, guide, split_cfg

B, C, H = 2, 4, 8


def outputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, 2 * C, H, H)).astype(np.float32) for _ in range(2))


def reference_forward_with_cfg(model_out: np.ndarray, scale: float) -> np.ndarray:
    """DiT models.py forward_with_cfg on a [cond; uncond] output (returns the guided half, not doubled)."""
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = np.split(eps, 2, axis=0)
    half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
    return np.concatenate([half_eps, np.split(rest, 2, axis=0)[0]], axis=1)


@pytest.mark.parametrize("scale", [1.5, 4.0, 0.0, 1.0])
def test_cfg_reference_channels_matches_dit_forward_with_cfg(scale: float) -> None:
    cond, uncond = outputs(0)
    batch_out = np.concatenate([cond, uncond])  # one forward on [x; x] with labels [y; null]
    got = guide(*split_cfg(batch_out), scale, REFERENCE_GUIDED_CHANNELS)
    np.testing.assert_allclose(got, reference_forward_with_cfg(batch_out, scale), rtol=1e-6, atol=1e-6)


def test_cfg_all_channels() -> None:
    cond, uncond = outputs(1)
    got = guide(cond, uncond, 4.0)
    np.testing.assert_allclose(got[:, :C], uncond[:, :C] + 4.0 * (cond[:, :C] - uncond[:, :C]), rtol=1e-6)
    np.testing.assert_array_equal(got[:, C:], cond[:, C:])  # the variance half is cond's
    assert not np.allclose(got[:, :C], cond[:, :C])


def test_partial_guidance_leaves_other_channels_and_inputs_alone() -> None:
    cond, uncond = outputs(2)
    cond_before = cond.copy()
    got = guide(cond, uncond, 2.0, 3)
    np.testing.assert_array_equal(got[:, 3:], cond[:, 3:])  # channel 3 and the variance half
    np.testing.assert_allclose(got[:, :3], uncond[:, :3] + 2.0 * (cond[:, :3] - uncond[:, :3]), rtol=1e-6)
    np.testing.assert_array_equal(cond, cond_before)


def test_weak_to_strong_uses_the_weak_conditional_output_as_baseline() -> None:
    strong_cond, weak_cond = outputs(3)
    got = guide(strong_cond, weak_cond, 1.5)
    expected = strong_cond.copy()
    expected[:, :C] = weak_cond[:, :C] + 1.5 * (strong_cond[:, :C] - weak_cond[:, :C])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(guide(strong_cond, weak_cond, 1.0), strong_cond, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(guide(strong_cond, weak_cond, 0.0)[:, :C], weak_cond[:, :C])


def test_torch_and_models_without_learned_sigma() -> None:
    cond, uncond = outputs(4)
    got = guide(torch.from_numpy(cond), torch.from_numpy(uncond), 4.0, 3)
    np.testing.assert_allclose(got.numpy(), guide(cond, uncond, 4.0, 3), rtol=1e-6)
    flow = guide(cond[:, :C], uncond[:, :C], 2.0, learned_sigma=False)
    np.testing.assert_allclose(flow, uncond[:, :C] + 2.0 * (cond[:, :C] - uncond[:, :C]), rtol=1e-6)


def test_cfg_labels_put_null_class_in_second_half() -> None:
    np.testing.assert_array_equal(cfg_labels(np.array([3, 207])), [3, 207, 1000, 1000])
    assert cfg_labels(torch.tensor([5]), num_classes=10).tolist() == [5, 10]


def test_guidance_errors() -> None:
    cond, uncond = outputs(5)
    with pytest.raises(ValueError, match=r"guided_channels must be in 1\.\.4"):
        guide(cond, uncond, 4.0, 5)  # would guide the variance half
    with pytest.raises(ValueError, match="differ in shape"):
        guide(cond, uncond[:1], 4.0)
    with pytest.raises(ValueError, match="even batch"):
        split_cfg(cond[:1])
