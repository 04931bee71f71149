"""What `run` writes: samples.png (a grid with a title line), samples.npy (fp32 [N, C, H, W]) and
record.json, all into a staging folder beside --out that becomes --out with one rename at the end — a
run that fails leaves no output folder.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..artifacts import _UMASK, fsync_replace, missing_folders, remove_empty_folders, staging_dir
from ..engines.backend import RunError

PNG_NAME, NPY_NAME, RECORD_NAME = "samples.png", "samples.npy", "record.json"
MIN_CELL = 96  # images are scaled up (nearest) to at least this many pixels a side


def check_out_dir(out: Path, need_bytes: int = 0) -> None:
    """Fail before sampling when `out` cannot be written, leaving nothing behind (a probe file, removed at
    once): an existing non-empty folder or a file, a mount point (the output folder is renamed into place,
    which a mount point refuses), a parent that is a file, not writable or refusing new files, or less free
    space than `need_bytes`. RunError (exit 1): the value is well-formed, the file system's state at that
    path is what fails, and it can change between two runs."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out} already exists and is not an empty folder: choose a new one")
    if os.path.ismount(out):
        raise RunError(
            f"--out {out} is a mount point, which the finished output folder cannot be renamed onto: "
            "give a new folder inside it"
        )
    base = existing_ancestor(out.parent)
    if not base.is_dir():
        raise RunError(f"cannot write to --out {out}: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise RunError(f"cannot write to --out {out}: {base} is not writable")
    try:  # access() says yes to root everywhere; a pseudo file system (/proc, /sys) still refuses files
        fd, probe = tempfile.mkstemp(dir=base, prefix=".flexidit-probe-")
    except OSError as err:
        raise RunError(
            f"cannot write to --out {out}: {base} refuses new files ({os.strerror(err.errno or 0)})"
        ) from None
    try:
        os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise RunError(
            f"not enough free space for --out {out}: its files need about {_mib(need_bytes)}, {base} has "
            f"{_mib(free)} free"
        )


def existing_ancestor(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def unique_out(out: Path) -> Iterator[Path]:
    """`out`, then `out`-2, `out`-3, ...: the names a default output folder may take."""
    yield out
    for i in itertools.count(2):
        yield out.with_name(f"{out.name}-{i}")


class StagedOutput:
    """A staging folder beside `out`: on success it becomes `out` with one rename (`self.out` is the
    folder written), on error it is removed with any parent folder it created. With `unique`, a name taken
    meanwhile (another run finished first) moves on to `out`-2, -3, ...: the rename refuses a non-empty
    folder, so two runs can never write into one."""

    def __init__(self, out: Path, unique: bool = False):
        self.names = unique_out(Path(out)) if unique else iter([Path(out)])
        self.out = next(self.names)
        self._stage: contextlib.ExitStack | None = None

    def __enter__(self) -> Path:
        check_out_dir(self.out)
        parent = self.out.parent
        self._created = missing_folders(parent)
        self._stack = contextlib.ExitStack()
        self.stage = self._stack.enter_context(staging_dir(parent))
        return self.stage

    def __exit__(self, kind, err, tb) -> None:
        failed = kind is not None
        try:
            if not failed:
                self._publish()
        except BaseException:
            failed = True
            raise
        finally:
            self._stack.close()
            if failed:  # nothing half-made: not even an empty samples/
                remove_empty_folders(self._created)

    def _publish(self) -> None:
        os.chmod(
            self.stage, 0o777 & ~_UMASK
        )  # mkdtemp made it private; the output folder gets the usual mode
        while True:
            try:
                os.replace(self.stage, self.out)  # an empty `out` is replaced; a non-empty one refuses
                return
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                taken, self.out = self.out, next(self.names, None)
                if self.out is None:
                    raise RunError(f"--out {taken} was created by someone else during the run") from None


def staged_output(out: Path, unique: bool = False) -> StagedOutput:
    """`with staged_output(out) as stage:` write into `stage`; it becomes the folder `.out` on success."""
    return StagedOutput(out, unique)


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


GRID_PAD, GRID_TOP = 2, 22  # pixels between cells; the title line's height


def grid_layout(labels: np.ndarray, h: int, w: int) -> tuple[list[list[int]], int, tuple[int, int]]:
    """The PNG grid: rows of image indices (one row per class when classes repeat, else rows of up to
    10), the scale-up factor, and the canvas size (width, height)."""
    n = len(labels)
    scale = max(1, -(-MIN_CELL // max(h, w)))
    order = list(dict.fromkeys(labels.tolist()))
    if len(order) < n:  # repeated classes: a row each
        rows = [[i for i in range(n) if labels[i] == c] for c in order]
    else:
        rows = [list(range(i, min(i + 10, n))) for i in range(0, n, 10)]
    cols = max(len(r) for r in rows)
    size = (
        cols * (w * scale + GRID_PAD) + GRID_PAD,
        GRID_TOP + len(rows) * (h * scale + GRID_PAD) + GRID_PAD,
    )
    return rows, scale, size


def output_bytes(
    labels: np.ndarray, sample_shape: tuple[int, ...], image_hw: tuple[int, int], steps: int
) -> dict:
    """What writing a run's outputs takes, before it runs: on disk, per file (upper bounds: the PNG at
    its uncompressed size, as deflate can store incompressible data; the record's per-step and per-image
    lists at their JSON width), and in host memory (the samples, the uint8 images, the grid canvas and
    the copy PIL encodes from)."""
    n = len(labels)
    npy = 128 + n * int(np.prod(sample_shape)) * 4
    _, _, (cw, ch) = grid_layout(labels, *image_hw)
    canvas = cw * ch * 3
    png = canvas + ch + canvas // 1000 + 4096  # + a filter byte per row, zlib's stored-block overhead
    record = 65536 + 160 * steps + 24 * n
    images = n * image_hw[0] * image_hw[1] * 3
    return {"disk": npy + png + record, "memory": npy + images + 2 * canvas}


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def grid_png(images: np.ndarray, labels: np.ndarray, title: str):
    """The images in `grid_layout`'s rows, the title above. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    _, h, w, _ = images.shape
    rows, scale, size = grid_layout(labels, h, w)
    pad, top = GRID_PAD, GRID_TOP
    cell_h, cell_w = h * scale, w * scale
    canvas = Image.new("RGB", size, "white")
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
