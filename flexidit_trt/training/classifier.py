"""The small Fashion-MNIST classifier behind eval's class-consistency score, and how it is trained.

A plain CNN on the model's own image format ([N, 1, 32, 32] in [-1, 1], the 28×28 digit padded with the
background value -1), so generated samples are classified exactly as they come out of the sampler.
The trained weights live in `flexidit_trt/weights/classifier.safetensors` (DEFAULT_CLASSIFIER).

    model = load_classifier()               # or load_classifier("path.safetensors")
    logits = model.classify(images)         # [N, 10]; any device, batched, no grad
    feats, logits = model.features_and_logits(images)  # the head's input [N, 4·width] too, same forward
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loop import LossWatch, TrainError, resolve_device

DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "weights" / "classifier.safetensors"
NUM_CLASSES = 10
FORMAT_TAG = "flexidit-trt/fashion-classifier/1"


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    # Two 3×3 convs then a 2× pool: 32 → 16 → 8 → 4 over three blocks.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionClassifier(nn.Module):
    """Three conv blocks (32, 64, 128 channels), global average pool, dropout, linear → 10 logits."""

    def __init__(self, width: int = 32, dropout: float = 0.3):
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            _conv_block(1, width), _conv_block(width, 2 * width), _conv_block(2 * width, 4 * width)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width, NUM_CLASSES)

    @property
    def feature_dim(self) -> int:
        """Length of the penultimate features (the final linear layer's input)."""
        return self.head.in_features

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features [N, feature_dim]: the pooled conv features the head reads."""
        return self.features(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(images)))

    @torch.no_grad()
    def features_and_logits(
        self, images: torch.Tensor, batch_size: int = 1000
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features [N, feature_dim] and logits [N, 10] (fp32, on the images' device) of images
        [N, 1, 32, 32] in [-1, 1], in eval mode, from one forward (eval's class agreement and its
        Fréchet distance on these features share it)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 32, 32):
            raise ValueError(f"expected images [N, 1, 32, 32] in [-1, 1], got shape {list(images.shape)}")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        try:
            for chunk in images.split(batch_size):
                h = self.embed(chunk.to(device=device, dtype=torch.float32)).float()
                feats.append(h.to(images.device))
                logits.append(self.head(h).float().to(images.device))  # dropout is the identity in eval
        finally:
            self.train(was_training)
        if not feats:
            return (
                torch.zeros(0, self.feature_dim, device=images.device),
                torch.zeros(0, NUM_CLASSES, device=images.device),
            )
        return torch.cat(feats), torch.cat(logits)

    def classify(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Logits [N, 10] (fp32, on the images' device) of images [N, 1, 32, 32] in [-1, 1], in eval mode."""
        return self.features_and_logits(images, batch_size)[1]


def save_classifier(
    model: FashionClassifier, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write the weights (fp32) and the width as safetensors metadata, atomically."""
    from safetensors.torch import save_file

    from ..artifacts import atomic_path

    path = Path(path)
    tensors = {
        k: v.detach().float().contiguous().cpu()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }
    meta = {"format": FORMAT_TAG, "width": str(model.width), **(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_classifier(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FashionClassifier:
    """The trained classifier (eval mode) from `path`, or from the committed DEFAULT_CLASSIFIER."""
    from safetensors import safe_open

    path = Path(path) if path is not None else DEFAULT_CLASSIFIER
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights not found: {path} (train them with benchmarks/train_default.py or "
            f"`flexidit-trt train-classifier --out {path}`)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as err:
        raise ValueError(f"cannot read classifier weights {path}: {err}") from err
    if meta.get("format") != FORMAT_TAG:
        raise ValueError(f"{path} is not a Fashion-MNIST classifier file (format {meta.get('format')!r})")
    model = FashionClassifier(width=int(meta["width"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # BatchNorm's num_batches_tracked (an int counter) is not stored; everything else must match.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit FashionClassifier: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()


# -- training -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierOptions:
    """AdamW with a one-cycle schedule and ±2-pixel shifts (inside the background padding, so a shift
    loses no pixels); no flips: Fashion-MNIST's shoes all face one way, and so should the samples."""

    out: Path | None = None  # where to save the weights (.safetensors); None: don't save
    data: Path | None = None
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    width: int = 32
    subset: int | None = None  # first N training images
    test_subset: int | None = None  # first N test images for the reported accuracy
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.width < 1:
            raise TrainError(
                f"classifier options: epochs, batch size and width must be >= 1 and lr > 0; got epochs "
                f"{self.epochs}, batch {self.batch_size}, width {self.width}, lr {self.lr}"
            )


@dataclass
class ClassifierResult:
    model: FashionClassifier
    test_accuracy: float  # on the (first test_subset) Fashion-MNIST test images
    test_images: int
    seconds: float
    path: Path | None


def accuracy(model: FashionClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on images [N, 1, 32, 32] in [-1, 1] with labels [N]."""
    logits = model.classify(images)
    return (logits.argmax(dim=1).cpu() == labels.cpu()).float().mean().item()


def train_classifier(options: ClassifierOptions) -> ClassifierResult:
    """Train the classifier on the training split, report its test accuracy, optionally save it."""
    from tqdm.auto import tqdm

    from .data import load_split

    device = resolve_device(options.device)
    train, test = load_split("train", options.data), load_split("test", options.data)
    x, y = train.tensors(options.subset, device)
    x_test, y_test = test.tensors(options.test_subset, device)
    n, m = len(y), len(y_test)

    torch.manual_seed(options.seed)
    model = FashionClassifier(width=options.width).to(device)
    per_epoch = max(1, math.ceil(n / options.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=options.lr, total_steps=options.epochs * per_epoch
    )
    gen = torch.Generator(device=device).manual_seed(options.seed)
    shifts = torch.Generator().manual_seed(
        options.seed
    )  # on the host: reading them must not wait for the GPU
    started = time.perf_counter()
    bar = tqdm(total=options.epochs * per_epoch, disable=not options.progress, desc="classifier", unit="step")
    model.train()
    watch, step = LossWatch("classifier training", device), 0
    for _ in range(options.epochs):
        perm = torch.randperm(n, generator=gen, device=device)
        for idx in perm.split(options.batch_size):
            shift = torch.randint(-2, 3, (2,), generator=shifts).tolist()
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            watch.add(loss, step)
            step += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        watch.check()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()
    acc = accuracy(model, x_test, y_test)
    seconds = time.perf_counter() - started
    path = None
    if options.out is not None:
        path = save_classifier(model, options.out, {"test_accuracy": f"{acc:.4f}", "test_images": str(m)})
    return ClassifierResult(model, acc, m, seconds, path)
