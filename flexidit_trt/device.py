"""A device named once: 'cpu', 'cuda' (= 'cuda:0') or 'cuda:N', parsed into one value every stage uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """'cpu' or the CUDA device `index`; `str(device)` spells it as every record and message does."""

    kind: str  # "cpu" or "cuda"
    index: int = -1  # the CUDA device index; -1 on the CPU

    @classmethod
    def parse(cls, text: object) -> Device:
        """'cpu', 'cuda' (= 'cuda:0') or 'cuda:N'; ValueError for anything else."""
        if text == "cpu":
            return cls("cpu")
        if text == "cuda":
            return cls("cuda", 0)
        if isinstance(text, str) and text.startswith("cuda:") and text[5:].isdigit():
            return cls("cuda", int(text[5:]))
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {text!r}")

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.is_cpu else f"cuda:{self.index}"


def is_cuda(device: object) -> bool:
    """Whether a device ('cpu', 'cuda', 'cuda:N', or a torch.device of those) is a CUDA device; ValueError
    for anything else."""
    return Device.parse(str(device)).is_cuda
