"""The Fashion-MNIST classifier behind eval's class-consistency: API, file format, training, committed weights.

What is replaced to stay fast: the width (8 instead of 32), the data (2,000 training and 1,000 test images)
and the epochs (1 instead of 10). The committed weights are checked on 2,000 test images.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from flexidit_trt.training.classifier import (
    DEFAULT_CLASSIFIER,
    ClassifierOptions,
    FashionClassifier,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from flexidit_trt.training.data import load_split
from flexidit_trt.training.loop import TrainError


def test_classify_api_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = FashionClassifier(width=4).train()
    images = torch.rand(5, 1, 32, 32) * 2 - 1
    logits = model.classify(images, batch_size=2)  # batched, eval mode, no grad
    assert logits.shape == (5, 10) and logits.dtype == torch.float32 and not logits.requires_grad
    assert model.training  # classify restores the mode it found
    path = save_classifier(model, tmp_path / "c.safetensors")
    loaded = load_classifier(path)
    assert not loaded.training and loaded.width == 4
    torch.testing.assert_close(loaded.classify(images, batch_size=2), logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected images \[N, 1, 32, 32\]"):
        model.classify(torch.zeros(2, 1, 28, 28))


def test_features_and_logits_come_from_one_forward():
    """The penultimate features eval scores are the head's input on the classify path: the head applied
    to them gives classify's logits bit for bit, and they equal the pooled conv features computed here
    independently of the method (eval mode: dropout is the identity)."""
    torch.manual_seed(0)
    model = FashionClassifier(width=4).train()
    with torch.no_grad():  # BatchNorm statistics away from their init, so that eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    images = torch.rand(5, 1, 32, 32) * 2 - 1
    features, logits = model.features_and_logits(images)
    assert features.shape == (5, model.feature_dim) == (5, 16) and not features.requires_grad
    assert model.training  # restored, as classify does
    torch.testing.assert_close(logits, model.classify(images), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.head(features), logits, rtol=0, atol=0)
        model.eval()
        torch.testing.assert_close(model.features(images).mean(dim=(2, 3)), features, rtol=0, atol=0)
        torch.testing.assert_close(model(images), logits, rtol=0, atol=0)
    # In batches of 2: CPU kernels sum in another order for another batch shape (measured 1.5e-8).
    batched = model.features_and_logits(images, batch_size=2)
    for got, want in zip(batched, (features, logits), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    empty_features, empty_logits = model.features_and_logits(torch.zeros(0, 1, 32, 32))
    assert empty_features.shape == (0, 16) and empty_logits.shape == (0, 10)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="classifier weights not found"):
        load_classifier(tmp_path / "none.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a Fashion-MNIST classifier file"):
        load_classifier(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read classifier weights"):
        load_classifier(garbage)


def test_short_training_learns(data_dir, tmp_path):
    """One epoch on 2,000 images (32 steps, width 8): measured 0.61 (seed 0) and 0.44 (seed 1) test
    accuracy on 1,000 images, against 0.10 for chance; asserted > 0.3 at seed 0."""
    out = tmp_path / "c.safetensors"
    options = ClassifierOptions(
        out=out, epochs=1, width=8, subset=2000, batch_size=64, test_subset=1000, progress=False, seed=0
    )
    result = train_classifier(options)
    assert result.test_accuracy > 0.3 and result.test_images == 1000
    again = accuracy(load_classifier(out), *load_split("test").tensors(1000))
    assert again == pytest.approx(result.test_accuracy, abs=1e-6)


def test_bad_classifier_options():
    with pytest.raises(TrainError, match="epochs, batch size and width must be >= 1"):
        train_classifier(ClassifierOptions(epochs=0))


def test_committed_classifier_is_accurate(data_dir):
    """The committed weights reach >= 90% (the full-test-set figure is in benchmarks/results)."""
    if not DEFAULT_CLASSIFIER.exists():
        pytest.skip(f"{DEFAULT_CLASSIFIER} is not committed yet (benchmarks/train_default.py makes it)")
    acc = accuracy(load_classifier(), *load_split("test").tensors(2000))
    assert acc >= 0.9
