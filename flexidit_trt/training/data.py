"""Fashion-MNIST from its four IDX files, as the model sees it: [N, 1, 32, 32] in [-1, 1].

The files are the official gzipped IDX files (Zalando's release; Debian's `dataset-fashion-mnist` ships
the same ones). Each is checked for what can go wrong with a download: a missing file, a broken gzip
stream, a foreign file (wrong IDX magic), a count or shape that is not Fashion-MNIST's, a truncated body,
and finally the published SHA-256, so a damaged but well-formed file is caught too.

Images are scaled to [-1, 1] (0 → -1, 255 → 1, so the discretised likelihood of the training loss sees
the 256 levels it assumes) and padded from 28×28 to 32×32 with -1, the background value: 32 tiles exactly
by every power-of-two patch up to 32 (28 does by 2 and 4, but not by 8), as DiT's latent grids do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FlexiditError

if TYPE_CHECKING:
    import torch

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 32  # the model's input side; the raw images are RAW_SIZE
RAW_SIZE = 28
PAD = (IMAGE_SIZE - RAW_SIZE) // 2

# The published files: name → (SHA-256 of the .gz, IDX magic, item count). Hashes as in the release.
FILES = {
    "train-images-idx3-ubyte": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        2051,
        60000,
    ),
    "train-labels-idx1-ubyte": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        2049,
        60000,
    ),
    "t10k-images-idx3-ubyte": (
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        2051,
        10000,
    ),
    "t10k-labels-idx1-ubyte": (
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        2049,
        10000,
    ),
}
SPLITS = {"train": "train", "test": "t10k"}


def default_search_path() -> tuple[Path, ...]:
    """Where the data is looked for without --data: shared/ beside the checkout (CI), then Debian's."""
    repo = Path(__file__).resolve().parents[2]
    return (repo.parent / "shared" / "data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))


class DataError(FlexiditError, ValueError):
    """Fashion-MNIST files that are missing or damaged; the message names the file and what is wrong."""


@dataclass(frozen=True)
class FashionMNIST:
    """One split: raw images uint8 [N, 28, 28] and labels int64 [N] in 0..9."""

    images: np.ndarray
    labels: np.ndarray
    folder: Path

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(
        self, count: int | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` (default all) images in model format [n, 1, 32, 32] and their int64 labels."""
        import torch

        n = len(self) if count is None else min(count, len(self))
        labels = torch.from_numpy(self.labels[:n].copy())  # a copy: the cached array is read-only
        return to_model_input(self.images[:n]).to(device), labels.to(device)


def find_data_dir(data: str | os.PathLike | None = None) -> Path:
    """`data` if given (it must hold the four files), else the first default folder that holds them."""
    if data is not None:
        folder = Path(data)
        if not folder.is_dir():
            raise DataError(f"Fashion-MNIST folder not found: {folder}")
        return folder
    candidates = default_search_path()
    for folder in candidates:
        if all(_file_in(folder, stem) is not None for stem in FILES):
            return folder
    raise DataError(
        "Fashion-MNIST not found; pass --data DIR with the four IDX .gz files "
        f"({', '.join(f'{s}.gz' for s in FILES)}); looked in: {', '.join(map(str, candidates))}"
    )


def load_split(split: str = "train", data: str | os.PathLike | None = None) -> FashionMNIST:
    """Read and check one split ("train": 60,000 images, "test": 10,000). Cached per folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return _load_split(split, find_data_dir(data).resolve())


@lru_cache(maxsize=4)
def _load_split(split: str, folder: Path) -> FashionMNIST:
    prefix = SPLITS[split]
    labels = read_idx(folder, f"{prefix}-labels-idx1-ubyte")  # the small file first: a bad one fails fast
    images = read_idx(folder, f"{prefix}-images-idx3-ubyte")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{folder / (prefix + '-labels-idx1-ubyte.gz')}: label {labels.max()} is not in 0..9")
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return FashionMNIST(images=images, labels=labels, folder=folder)


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):  # the release is gzipped; an unpacked copy is read as well
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(folder: Path, stem: str) -> np.ndarray:
    """One checked IDX file as uint8: [N, 28, 28] for images, [N] for labels."""
    expected_sha, magic, count = FILES[stem]
    path = _file_in(folder, stem)
    if path is None:
        raise DataError(f"Fashion-MNIST file missing: {folder / (stem + '.gz')}")
    raw = path.read_bytes()
    body = raw
    if path.suffix == ".gz":
        try:
            body = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: not a valid gzip file ({err}); re-download it") from None
    dims = 3 if magic == 2051 else 1
    header = 4 + 4 * dims
    if len(body) < header:
        raise DataError(f"{path}: truncated ({len(body)} bytes, shorter than the IDX header)")
    got_magic = struct.unpack(">I", body[:4])[0]
    if got_magic != magic:
        raise DataError(
            f"{path}: bad IDX magic {got_magic:#010x}, expected {magic:#010x} "
            f"({'images' if dims == 3 else 'labels'}); is this the right file?"
        )
    shape = struct.unpack(f">{dims}I", body[4:header])
    want = (count, RAW_SIZE, RAW_SIZE) if dims == 3 else (count,)
    if shape != want:
        raise DataError(f"{path}: holds shape {list(shape)}, expected {list(want)} for Fashion-MNIST")
    size = int(np.prod(want))
    if len(body) - header != size:
        what = "truncated" if len(body) - header < size else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(body) - header} data bytes, expected {size}")
    if path.suffix == ".gz":
        sha = hashlib.sha256(raw).hexdigest()
        if sha != expected_sha:
            raise DataError(
                f"{path}: SHA-256 {sha[:16]}… does not match the published file ({expected_sha[:16]}…); "
                "the file is damaged or not the official release"
            )
    return np.frombuffer(body, dtype=np.uint8, offset=header).reshape(want).copy()


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] (numpy or torch) → float32 torch [N, 1, 32, 32] in [-1, 1], padded with -1."""
    import torch

    # A copy: the cached arrays are read-only, and torch wants writable memory.
    x = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != (RAW_SIZE, RAW_SIZE):
        raise ValueError(f"expected uint8 images [N, 28, 28], got {x.dtype} {list(x.shape)}")
    x = x.float().div(127.5).sub(1.0).unsqueeze(1)
    return torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)


def to_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Model-format images [N, 1, 32, 32] in [-1, 1] → uint8 [N, 32, 32] (for grids and image files)."""
    import torch

    x = torch.as_tensor(images).detach().float().cpu()
    return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
