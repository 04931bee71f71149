import sys
from pathlib import Path

# Test helpers (independent reference implementations) live beside the tests; the reference sampler
# transcriptions live in benchmarks/, which the GPU benchmarks share with the tests.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
