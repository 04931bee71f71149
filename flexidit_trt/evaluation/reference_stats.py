"""Features of the Fashion-MNIST test images: computed once, cached, checked on every read.

Two reference sets, each cached in its own file:
- Inception features (FID, KID, precision/recall): the 10,000 test images as stored (uint8 28×28), fed
  through `FIDInception.features` exactly like generated ones after their centre 28×28 crop
  (`generated_to_uint8`);
- the classifier's penultimate features (its Fréchet distance): the test images in the model's format
  (padded 32×32 in [-1, 1]), as the classifier sees generated samples.
A cache file is keyed by the network (the Inception file's hash, the classifier's weights' hash), the
images' content hash, the image count and the preprocessing protocol, and written atomically: a stale or
half-written cache is never read.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..artifacts import atomic_path, sha256_json
from .inception import FIDInception, no_tf32
from .metrics import FeatureStats, feature_stats

if TYPE_CHECKING:
    from ..training.classifier import FashionClassifier

# Changing how images reach the network changes every feature: bump this and old caches stop matching.
PROTOCOL = "uint8-28x28-gray3-stylegan-resize299-pool3/1"
CLASSIFIER_PROTOCOL = "float-32x32-pad-1-penultimate/1"
TEST_IMAGES = 10_000


@dataclass(frozen=True)
class ReferenceSet:
    """The real side of a metric: features [N, D] (fp32), their statistics, and provenance."""

    features: np.ndarray
    stats: FeatureStats
    key: dict

    @property
    def count(self) -> int:
        return self.features.shape[0]


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "flexidit-trt"


def load_test_images(data_dir: str | os.PathLike | None, count: int | None = None) -> np.ndarray:
    """The first `count` (default all) Fashion-MNIST test images, uint8 [N, 28, 28] as stored."""
    from ..training.data import load_split

    images = load_split("test", data_dir).images
    if count is not None:
        if not 2 <= count <= images.shape[0]:
            raise ValueError(f"reference count must be in 2..{images.shape[0]}, got {count}")
        images = images[:count]
    return np.array(images, dtype=np.uint8)  # a copy: the loader's arrays are read-only


def generated_to_uint8(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Generated samples [N, 1, 32, 32] in [-1, 1] → uint8 [N, 1, 28, 28]: quantised as an image file
    stores them, then the centre 28×28 (the training data's padding removed), so generated and real
    images reach the Inception network at the same size and framing."""
    from ..training.data import PAD, RAW_SIZE, to_uint8

    images = to_uint8(samples)[:, PAD : PAD + RAW_SIZE, PAD : PAD + RAW_SIZE]
    return torch.from_numpy(np.ascontiguousarray(images))[:, None]


def reference_set(
    inception: FIDInception,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    count: int | None = None,
    batch_size: int = 200,
) -> ReferenceSet:
    """Inception features of the test images, from the cache when its key matches, else computed and cached."""
    images = load_test_images(data_dir, count)
    key = {
        "protocol": PROTOCOL,
        "inception_sha256": inception.sha256,
        "images_sha256": _array_sha256(images),
        "count": int(images.shape[0]),
    }
    return _cached(
        cache_dir,
        "fid-reference",
        key,
        lambda: inception.features(torch.from_numpy(images[:, None]), batch_size=batch_size).cpu().numpy(),
    )


def classifier_reference_set(
    classifier: FashionClassifier,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    count: int | None = None,
    batch_size: int = 1000,
) -> ReferenceSet:
    """The classifier's penultimate features of the test images, cached like `reference_set`'s; keyed by
    the classifier's weights, so another classifier file never reads this one's."""
    from ..artifacts import sha256_state_dict
    from ..training.data import to_model_input

    images = load_test_images(data_dir, count)
    key = {
        "protocol": CLASSIFIER_PROTOCOL,
        "classifier_sha256": sha256_state_dict(classifier.state_dict()),
        "images_sha256": _array_sha256(images),
        "count": int(images.shape[0]),
    }

    def compute() -> np.ndarray:
        device = next(classifier.parameters()).device
        with no_tf32():
            features, _ = classifier.features_and_logits(to_model_input(images).to(device), batch_size)
        return features.cpu().numpy()

    return _cached(cache_dir, "classifier-reference", key, compute)


def _cached(
    cache_dir: str | os.PathLike | None, prefix: str, key: dict, compute: Callable[[], np.ndarray]
) -> ReferenceSet:
    path = Path(cache_dir or default_cache_dir()) / f"{prefix}-{sha256_json(key)[:20]}.npz"
    cached = _read(path, key)
    if cached is not None:
        return cached
    features = np.asarray(compute(), dtype=np.float32)
    ref = ReferenceSet(features, feature_stats(features), key)
    _write(path, ref)
    return ref


def _array_sha256(array: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256(f"{array.dtype}|{list(array.shape)}\0".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _read(path: Path, key: dict) -> ReferenceSet | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != key:
                return None
            features = data["features"]
            n, d = features.shape
            # Few images: the statistics carry the centred rows (FID's low-rank route); recomputing is cheap.
            stats = feature_stats(features) if n <= d else FeatureStats(data["mu"], data["sigma"], n)
            return ReferenceSet(features, stats, key)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # unreadable (truncated, another version, a disk error): recompute and replace it


def _write(path: Path, ref: ReferenceSet) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            features=ref.features,
            mu=ref.stats.mu,
            sigma=ref.stats.sigma,
            key=json.dumps(ref.key, sort_keys=True),
        )
