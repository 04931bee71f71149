"""The `flexidit-trt` command: parse, call the library, print. Nothing else lives here.

One module per group of subcommands; each registers its commands on `main` when imported.
"""

from __future__ import annotations

from . import (
    bench,  # noqa: F401  (registers bench, bench report)
    build_info,  # noqa: F401  (registers info, build)
    eval,  # noqa: F401  (registers eval)
    run,  # noqa: F401  (registers run)
    serve,  # noqa: F401  (registers serve)
    train,  # noqa: F401  (registers train, flexify, train-classifier)
)
from .common import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
