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


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The Fashion-MNIST folder; the test is skipped on a machine without it."""
    from flexidit_trt.training.data import DataError, find_data_dir

    try:
        return find_data_dir()
    except DataError as err:
        pytest.skip(f"Fashion-MNIST is not on this machine: {err}")
