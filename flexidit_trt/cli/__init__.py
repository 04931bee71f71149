"""The `flexidit-trt` command: parse, call the library, print. Nothing else lives here.

One module per group of subcommands; each registers its commands on `main` when imported.
"""

from __future__ import annotations

from . import build_info  # noqa: F401  (registers info, build)
from .common import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
