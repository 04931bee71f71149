"""Engine manifests checked on load, and the build commands their errors name: shared by every engine
kind (no torch here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..artifacts import MANIFEST_NAME, ManifestError, read_manifest, sha256_file, signature_mismatch
from .backend import RunError


def build_command(
    model_name: str, kind: str, checkpoint: str | None = None, precision: str | None = None
) -> str:
    """The exact command that builds what a backend needs."""
    parts = ["flexidit-trt", "build", "--model", model_name]
    if checkpoint:
        parts += ["--checkpoint", str(checkpoint)]
    if precision:
        parts += ["--precision", precision]
    if kind == "trt":
        parts.append("--require-trt")
    elif kind == "aoti":
        parts.append("--aoti")
    elif kind == "compile-cache":
        parts.append("--compile-cache")
    return " ".join(parts)


def check_checkpoint(recorded: dict | None, checkpoint_sha: str | None, what: str) -> None:
    """Refuse artifacts built from other weights than `checkpoint` (when one is given), naming the field."""
    if checkpoint_sha is None:
        return
    have = (recorded or {}).get("sha256")
    if have != checkpoint_sha:
        built = "seeded random weights" if (recorded or {}).get("init") == "random" else f"sha256 {have}"
        raise RunError(
            f"{what} were built from other weights: checkpoint sha256 differs (built from {built}, "
            f"--checkpoint has {checkpoint_sha}); rebuild them from this checkpoint"
        )


def read_engines_manifest(folder: str | Path, kind: str, schema: int, engines: str) -> dict:
    """The manifest of an engine folder of `kind` ("no {engines} engines at ..." when it is missing);
    RunError when it is missing, unreadable or foreign."""
    try:
        manifest = read_manifest(Path(folder) / MANIFEST_NAME, kind, schema)
    except ManifestError as err:
        raise RunError(str(err)) from None
    if manifest is None:
        raise RunError(f"no {engines} engines at {folder} (no {MANIFEST_NAME})")
    return manifest


def check_built_for(
    entry: Mapping,
    checks: list[tuple[str, Any, Any]],
    *,
    engine: str,
    rebuild: str,
    checkpoint_sha256: str | None = None,
    weights_sha256: str | None = None,
) -> None:
    """RunError naming the first (field, built, here) of `checks` that differs, then the checkpoint's and
    the static weights' hashes (when given) against the entry's: "{engine} was built for {field} ...,
    this run has ...: rebuild it with `{rebuild}`"."""
    checks = list(checks)
    if checkpoint_sha256 is not None:
        checks.append(("checkpoint.sha256", (entry.get("checkpoint") or {}).get("sha256"), checkpoint_sha256))
    if weights_sha256 is not None:
        checks.append(("weights_sha256", entry.get("weights_sha256"), weights_sha256))
    for field, built, here in checks:
        if built != here:
            raise RunError(
                f"{engine} was built for {field} {built!r}, this run has {here!r}: rebuild it with `{rebuild}`"
            )


def check_files(folder: str | Path, files: Mapping[str, str], what: str, rebuild: str) -> None:
    """RunError unless every file of `files` (name → sha256, as a manifest records them) is in `folder` with
    that hash: a damaged, truncated or edited file, or a hand-edited hash, is named with the field."""
    if not files:
        raise RunError(
            f"{what}: its manifest entry records no files (field 'files'): rebuild it with `{rebuild}`"
        )
    for name, recorded in files.items():
        path = Path(folder) / name
        if not path.is_file():
            raise RunError(f"{what}: {path} is missing: rebuild it with `{rebuild}`")
        have = sha256_file(path)
        if have != recorded:
            raise RunError(
                f"{what}: {path} does not match its manifest (field files.{name}: sha256 {str(recorded)[:12]}... "
                f"recorded, the file has {have[:12]}...): rebuild it with `{rebuild}`"
            )


def check_signature(recorded: Mapping, actual: Mapping, what: str, rebuild: str) -> None:
    """RunError naming the first field of the recorded inputs/outputs that differs from the loaded graph's."""
    field = signature_mismatch(recorded, actual)
    if field is not None:
        raise RunError(
            f"{what}: manifest field {field} differs from the graph's (recorded {_at(recorded, field)!r}, the "
            f"graph has {_at(actual, field)!r}): rebuild it with `{rebuild}`"
        )


def _at(signature: Mapping, field: str) -> Any:
    """The value of "inputs[1].name" (or of a whole "inputs") in a signature."""
    key, _, rest = field.partition("[")
    if not rest:
        return signature.get(key)
    index, _, name = rest.partition("].")
    items = signature.get(key) or []
    return items[int(index)].get(name) if int(index) < len(items) else None
