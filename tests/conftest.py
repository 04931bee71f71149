import sys
from pathlib import Path

# Test helpers (independent reference implementations) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
