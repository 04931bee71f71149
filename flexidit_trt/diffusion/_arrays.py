"""numpy/torch dispatch without importing torch (the core runs engines and need not have it)."""

from __future__ import annotations

import sys
from typing import Any


def is_torch(a: Any) -> bool:
    """True for a torch.Tensor. numpy 2 arrays also have `.device`, so check the type itself."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)
