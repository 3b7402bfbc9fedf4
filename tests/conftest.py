import atexit
import os
import re
import shutil
import tempfile

import pytest

FAKE_DEVICES = r"--xla_force_host_platform_device_count=\d+"

# Tests of the parallel code need several devices; on CPU, XLA can fake them. The suite's time is
# compiling, and without LLVM's optimisations XLA compiles the tests' programs about 30% faster and
# runs them slower; the whole suite took 955 s against 1,169 s (2026-12-07; README). Runs and
# benchmarks keep XLA's default. Must be set before JAX is first imported anywhere in the session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("MUJOCO_GL", "egl")

# One compilation cache per session, shared by the xdist workers and the processes the tests
# start (they inherit the variable): a program compiled again, as every tiny agent's train step
# is, or a resumed run's, is read back. Fresh each session, so the suite measures what a clean
# checkout takes; the session that made it (no xdist worker) removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="reverie-tests-jax-")
    if "PYTEST_XDIST_WORKER" not in os.environ:
        atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def one_device_env() -> dict:
    """The environment for a process that should see one CPU device, as a run started by hand
    does: the session's XLA_FLAGS without the faked devices, everything else kept."""
    return {**os.environ, "XLA_FLAGS": re.sub(FAKE_DEVICES, "", os.environ.get("XLA_FLAGS", "")).strip()}
