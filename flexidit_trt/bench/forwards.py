"""Each engine's forward alone, timed against its floor."""

from __future__ import annotations

from typing import Any

from ..runtime import Pipeline


def _stream(pipe: Pipeline) -> Any:
    """The pipeline's one stream (a runtime.cuda.Stream, made by its first generate), for the events."""
    stream = getattr(pipe, "stream", None) or getattr(pipe, "_stream", None)
    if stream is None:
        raise RuntimeError("the pipeline has no CUDA stream yet: run a trajectory first")
    return stream
