import sys
from pathlib import Path

import pytest

# Test helpers (independent reference implementations) live beside the tests; the reference sampler
# transcriptions live in benchmarks/, which the GPU benchmarks share with the tests.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture()
def one_torch_thread():
    """Tiny forwards: one intra-op thread is faster, and immune to a busy machine's thread contention.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch  # here, not at the top: some tests check paths that must run without torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Saves a flexible dit_s checkpoint (2 blocks, 8x8 latent, patch sizes 2 and 4) of a LoRA rank and
    seed: `tiny_checkpoint(lora_rank=4, seed=1)` is its path."""

    def save(lora_rank: int, seed: int) -> Path:
        from flexidit_trt.model import FlexiDiT, save_checkpoint

        model = FlexiDiT.from_config(
            "dit_s", init="random", input_size=8, depth=2, lora_rank=lora_rank, seed=seed
        )
        path = tmp_path_factory.mktemp("ckpt") / "dit_s_tiny.safetensors"
        save_checkpoint(model, path)
        return path

    return save


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The Fashion-MNIST folder; the test is skipped on a machine without it."""
    from flexidit_trt.training.data import DataError, find_data_dir

    try:
        return find_data_dir()
    except DataError as err:
        pytest.skip(f"Fashion-MNIST is not on this machine: {err}")
