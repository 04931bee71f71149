"""Artifact plumbing shared by export/ and engines/: atomic writes, content hashes, manifests, locks.

Every file under the artifact roots is written to a temporary name in its own folder and moved into
place with os.replace, so an interrupt leaves the old file or the new one, never half of either. A
manifest is written last: it is the commit point, and a file whose hash does not match its manifest
entry counts as absent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import FlexiditError, UsageError

MANIFEST_NAME = "manifest.json"
EXPORT_KIND = "flexidit-trt/onnx-export"
EXPORT_SCHEMA = 1
_CHUNK = 1 << 22


class BuildError(FlexiditError):
    """A build cannot go on for a reason the user can fix; the message says which and how."""


class OptionError(BuildError, UsageError):
    """An option value, or options that contradict each other or the checkpoint: bad usage, which the
    CLI reports with exit code 2 (other BuildErrors are failures of the work: exit code 1)."""


class ManifestError(BuildError):
    """A manifest that is missing, unreadable or of another kind or schema (the message names the field)."""


@dataclass(frozen=True)
class Step:
    """A build's progress event: the patch size whose graph or engine it concerns (None: none in
    particular), the stage ("resolve", "prepare", "export", "validate", "reuse", "remove", "build") and
    a line for people. Consumers decide what counts as a step from the fields, never from the text."""

    patch_size: int | None
    stage: str
    detail: str

    def __str__(self) -> str:
        return self.detail if self.patch_size is None else f"p{self.patch_size}: {self.detail}"


Progress = Callable[[Step], None]


def no_progress(_step: Step) -> None:
    pass


# -- atomic writes -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary file lives in the same folder, so os.replace is a rename on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600; artifacts get the usual mode (set after writing: a writer may recreate the file)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        fsync_replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return write_bytes_atomic(path, text.encode())


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike) -> Iterator[Path]:
    """A private temporary folder inside `parent` (same file system), removed on exit."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".staging-"))
    try:
        yield tmp
    finally:
        _rmtree(tmp)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _read_umask() -> int:
    """The process umask, read once at import: Linux reports it in /proc; elsewhere os.umask is the only
    way to read it, which sets it for an instant, harmless before any other thread creates files."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def fsync_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Flush `src` to disk, then rename it to `dst` (same file system): a crash cannot expose a file
    whose data has not reached the disk, and readers see the old file or the new one, never half."""
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """`path` and its ancestors that do not exist yet, innermost first."""
    path = Path(os.path.abspath(path))
    return [p for p in [path, *path.parents] if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each folder (innermost first) with its subfolders where nothing but empty folders is left:
    what a failed run created and did not fill."""
    for folder in folders:
        if folder.is_dir():
            for root, _dirs, _files in os.walk(folder, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(root)


@contextlib.contextmanager
def folders_removed_on_failure(path: str | os.PathLike) -> Iterator[None]:
    """On an exception (Ctrl-C included) the folders the block created on the way to `path`, `path`
    included, are removed where they hold nothing."""
    created = missing_folders(path)
    try:
        yield
    except BaseException:
        remove_empty_folders(created)
        raise


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it is writable, or raise BuildError saying why."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = "permission denied" if err.errno != errno.EROFS else "read-only file system"
        raise BuildError(f"cannot write to {path}: {reason}") from None
    return path


# -- hashing -------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Content hash of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode() + b"\0" + sha256_file(file).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_state_dict(state: Mapping[str, Any]) -> str:
    """Hash of a torch state dict by name, dtype, shape and bytes (order-independent)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}\0".encode())
        if tensor.numel():
            # A byte view (no copy) works for every dtype, bfloat16 included (numpy has none).
            h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# -- manifests -----------------------------------------------------------------------------------------------
def utc_now() -> str:
    """The manifests' timestamp format (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(kind: str, schema: int, model_name: str, section: str, **fields: Any) -> dict:
    """An empty manifest of `kind`/`schema` for `model_name`, its entries under `section`."""
    return {"kind": kind, "schema": schema, "model": model_name, **fields, section: {}, "updated": utc_now()}


def settings_changed(entry: Mapping[str, Any] | None, settings: Mapping[str, Any], force: bool) -> str | None:
    """Why an artifact must be rebuilt judging by its manifest entry's settings alone, or None if they match."""
    if force:
        return "--force"
    if entry is None:
        return "new"
    old = entry.get("settings", {})
    changed = [k for k in settings if old.get(k) != settings[k]]
    if changed:
        return "changed " + ", ".join(f"{k} {old.get(k)}->{settings[k]}" for k in changed)
    return None


def read_manifest(path: str | os.PathLike, kind: str, schema: int) -> dict | None:
    """The manifest at `path`, or None if there is none; refuses another kind or schema by name."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ManifestError(f"cannot read manifest {path}: {err}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path} is not a JSON object")
    for field, want in (("kind", kind), ("schema", schema)):
        if data.get(field) != want:
            raise ManifestError(
                f"manifest {path}: field {field!r} is {data.get(field)!r}, expected {want!r} "
                "(written by another version? remove the folder to rebuild)"
            )
    return data


def signature_mismatch(have: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """The first field ("inputs[1].name", "outputs[0].shape") where two graph signatures ({"inputs":
    [{name, dtype, shape}], "outputs": [...]}, as export manifests record them) differ; None if they agree."""
    for key in ("inputs", "outputs"):
        a, b = list(have.get(key) or []), list(want.get(key) or [])
        if len(a) != len(b):
            return key
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            for name in ("name", "dtype", "shape"):
                if x.get(name) != y.get(name):
                    return f"{key}[{i}].{name}"
    return None


def export_dir(workdir: str | os.PathLike, model_name: str) -> Path:
    """`<workdir>/export/<model>`: the ONNX graphs and their manifest (export/README.md)."""
    return Path(workdir) / "export" / model_name


def load_export_manifest(workdir: str | os.PathLike, model_name: str) -> dict:
    """The export manifest of `model_name` under `workdir`; ManifestError if absent or foreign."""
    path = export_dir(workdir, model_name) / MANIFEST_NAME
    data = read_manifest(path, EXPORT_KIND, EXPORT_SCHEMA)
    if data is None:
        raise ManifestError(f"no export manifest at {path}: run `flexidit-trt build` first")
    return data


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on an artifact folder, so two builds never interleave their writes.

    The lock is an flock on `<folder>/.lock`, which the holder deletes before it unlocks, so no lock file
    stays after a build (one killed outright leaves it, unlocked, and the next build takes it). Deleting a
    file another build may have open is safe because a build, once it holds the flock, checks that its
    open file is still the one at the path; if the holder before it deleted it meanwhile, it locks the new
    one instead (the scheme of filelock's and git's lock files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, builds must not overlap
        yield
        return
    handle = _locked_file(path, fcntl)
    try:
        yield
    finally:
        remove_quietly(path)  # while still held: a build waiting on this file sees it gone and retries
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _locked_file(path: Path, fcntl) -> Any:
    """An open `path` this process holds the flock of, and which is still the file at `path`."""
    while True:
        handle = open(path, "a+")  # noqa: SIM115 - held for the whole build, closed by folder_lock
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise BuildError(f"another build is writing to {path.parent} (lock file {path})") from None
        try:
            here, mine = os.stat(path), os.fstat(handle.fileno())
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # locked a file the previous holder had just deleted: take the new one


@contextlib.contextmanager
def locked_manifest(folder: Path, kind: str, schema: int, model_name: str, **fields: Any) -> Iterator[dict]:
    """An engine folder held under its lock, with its manifest (read, or new with `fields`) and what an
    interrupted build left there removed; `commit_entry` writes each finished entry."""
    with folder_lock(folder):
        manifest = read_manifest(folder / MANIFEST_NAME, kind, schema) or new_manifest(
            kind, schema, model_name, "engines", **fields
        )
        remove_orphans(folder)
        yield manifest


def commit_entry(folder: Path, manifest: dict, patch_size: int, entry: dict) -> None:
    """Record `entry` for `patch_size` and write the manifest: the commit point for that artifact."""
    manifest["engines"][str(patch_size)] = entry
    manifest["updated"] = utc_now()
    write_json_atomic(folder / MANIFEST_NAME, manifest)


def remove_orphans(
    folder: str | os.PathLike, keep: set[str] | None = None, pattern: str | None = None
) -> list[str]:
    """Remove what interrupted writes left in `folder` (call it holding the folder's lock): staging
    folders, temporary files, and files matching `pattern` whose names are not in `keep`."""
    folder = Path(folder)
    removed = []
    for path in folder.glob(".staging-*"):
        _rmtree(path)
        removed.append(path.name)
    for path in folder.glob(".*.tmp"):
        remove_quietly(path)
        removed.append(path.name)
    if pattern is not None:
        for path in folder.glob(pattern):
            if path.name not in (keep or set()):
                remove_quietly(path)
                removed.append(path.name)
    return removed


def remove_quietly(*paths: str | os.PathLike | None) -> None:
    for p in paths:
        if p is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
