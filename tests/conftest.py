"""Test setup: CPU and quiet TF. ddjax is pip-installed (`pip install -e .`); `launch`,
`configs` and `benchmarks` import from the repository root (pytest.ini: pythonpath)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
