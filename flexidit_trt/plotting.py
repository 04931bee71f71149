"""matplotlib for the reports' plots: files only (no display), and one line naming the extra that brings
it when it is not installed (the first README line installs only what `run` needs)."""

from __future__ import annotations

from typing import Any

from .errors import FlexiditError


def pyplot(extra: str) -> Any:
    """matplotlib.pyplot on the Agg backend; FlexiditError naming `pip install 'flexidit-trt[extra]'`
    without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise FlexiditError(
            f"the plots need matplotlib, which is not installed: pip install 'flexidit-trt[{extra}]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
