"""Test setup: CPU and quiet TF. ddjax is pip-installed (`pip install -e .`); `launch`,
`configs` and `benchmarks` import from the repository root (pytest.ini: pythonpath)."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Compiling dominates most tests, and many compile the same programs again (the same tiny
# models in several tests, each binary run in a subprocess): JAX's persistent cache, one
# directory shared by the xdist workers and the subprocesses they start, compiles each
# once per machine. Set before any test imports jax, which reads it at import.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "ddjax-tests-jax-cache"))
