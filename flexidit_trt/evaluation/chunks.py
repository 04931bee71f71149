"""The chunks of a run: chunk c holds samples [c·B, (c+1)·B), sampled with a seed fixed by (seed, c);
with a resume folder each finished chunk is saved atomically and found again by a later call.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..artifacts import atomic_path

CHUNK_SCHEMA = 2  # 2: the classifier's penultimate features


def chunk_seed(seed: int, chunk: int) -> int:
    # Independent streams per chunk, fixed by (seed, chunk) alone: the same on any number of GPUs.
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def read_chunk(folder: Path | None, chunk: int, expected: int) -> dict | None:
    if folder is None:
        return None
    path = folder / f"chunk{chunk:05d}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # absent or damaged: make it again
    return part if part["index"].shape[0] == expected else None


def write_chunk(folder: Path | None, chunk: int, part: dict) -> None:
    if folder is None:
        return
    with atomic_path(folder / f"chunk{chunk:05d}.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **part)


def grid_samples(parts: list[dict], per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` samples of each class from rank 0's first chunks (chunk 0 holds every class)."""
    chosen: dict[int, list[np.ndarray]] = {}
    for part in parts:
        for image, label in zip(part["samples"], part["labels"], strict=True):
            bucket = chosen.setdefault(int(label), [])
            if len(bucket) < per_class:
                bucket.append(image)
        if all(len(chosen.get(k, [])) >= per_class for k in range(10)):
            break
    labels = sorted(chosen)
    images = np.stack([img for k in labels for img in chosen[k]])
    return images, np.array([k for k in labels for _ in chosen[k]])
