"""What `run` writes: samples.png (a grid with a title line), samples.npy (fp32 [N, C, H, W]) and
record.json, all into a staging folder beside --out that becomes --out with one rename at the end — a
run that fails leaves no output folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..artifacts import _UMASK, fsync_replace, staging_dir
from ..engines.backend import RunError

PNG_NAME, NPY_NAME, RECORD_NAME = "samples.png", "samples.npy", "record.json"
MIN_CELL = 96  # images are scaled up (nearest) to at least this many pixels a side


def check_out_dir(out: Path) -> None:
    """Fail before sampling when `out` cannot be written: an existing non-empty folder, a file, or a parent
    that cannot be created or written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out} already exists and is not an empty folder: choose a new one")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(
            f"cannot write to --out {out}: {os.strerror(err.errno) if err.errno else err}"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to --out {out}: {parent} is not writable")


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A staging folder beside `out`; on success it becomes `out` (one rename), on error it is removed."""
    out = Path(out)
    check_out_dir(out)
    with staging_dir(out.parent) as stage:
        yield stage
        os.chmod(stage, 0o777 & ~_UMASK)  # mkdtemp made it private; the output folder gets the usual mode
        try:
            os.replace(stage, out)  # an empty `out` is replaced; a non-empty one refuses
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise RunError(f"--out {out} was created by someone else during the run") from None
            raise


def write_outputs(
    stage: Path, samples: np.ndarray, record: dict, labels: np.ndarray, title: str, image: np.ndarray
) -> None:
    """samples.npy (the final x), samples.png (`image`: uint8 [N, H, W, 3] with `title`), record.json."""
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n"
    _save(stage / NPY_NAME, lambda f: np.save(f, samples.astype(np.float32)))
    _save(stage / PNG_NAME, lambda f: grid_png(image, labels, title).save(f, format="PNG"))
    _save(stage / RECORD_NAME, lambda f: f.write(text.encode()))


def _save(path: Path, write) -> None:
    """`write(file)` into a temporary name, flushed to disk, then renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    fsync_replace(tmp, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


# -- images ---------------------------------------------------------------------------------------------------
def to_images(samples: np.ndarray) -> np.ndarray:
    """Pixel-space samples in [-1, 1] → uint8 [N, H, W, 3]."""
    x = np.clip((samples + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    x = np.transpose(x, (0, 2, 3, 1))
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x[..., :3]


def latents_as_images(latents: np.ndarray) -> np.ndarray:
    """Latents shown as they are: channels 0-2 as RGB, each image min-max scaled (for a look, not a decode)."""
    x = latents[:, :3].astype(np.float64)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - lo) / np.maximum(hi - lo, 1e-12)
    return np.transpose((x * 255 + 0.5).astype(np.uint8), (0, 2, 3, 1))


def decode_latents(latents: np.ndarray, vae_path: str | os.PathLike, device: str) -> np.ndarray:
    """SD-VAE latents → images in [-1, 1] with a local diffusers AutoencoderKL folder (imports diffusers)."""
    try:
        import torch
        from diffusers.models import AutoencoderKL
    except ImportError as err:
        raise RunError(f"--vae needs torch and diffusers installed ({err.name} is missing)") from None
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_path), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as err:
        raise RunError(f"cannot load the VAE from {vae_path}: {err}") from None
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    out = []
    with torch.no_grad():
        for i in range(0, len(latents), 16):
            z = torch.as_tensor(latents[i : i + 16], device=device, dtype=torch.float32)
            out.append(vae.decode(z / scale).sample.float().cpu().numpy())
    return np.concatenate(out)


def grid_png(images: np.ndarray, labels: np.ndarray, title: str):
    """One row per class when classes repeat (columns: that class's images), else rows of up to 10;
    the title above. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images.shape
    scale = max(1, -(-MIN_CELL // max(h, w)))
    order = list(dict.fromkeys(labels.tolist()))
    if len(order) < n:  # repeated classes: a row each
        rows = [[i for i in range(n) if labels[i] == c] for c in order]
    else:
        rows = [list(range(i, min(i + 10, n))) for i in range(0, n, 10)]
    cols = max(len(r) for r in rows)
    pad, top = 2, 22
    cell_h, cell_w = h * scale, w * scale
    canvas = Image.new("RGB", (cols * (cell_w + pad) + pad, top + len(rows) * (cell_h + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, i in enumerate(row):
            tile = Image.fromarray(images[i]).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (pad + c * (cell_w + pad), top + pad + r * (cell_h + pad)))
    # Pillow's bundled scalable font (FreeType): the tiny bitmap default drops dots and spaces.
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 (an environment pinned below our requirement): the bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(canvas).text((pad, 3), title, fill="black", font=font)
    return canvas
