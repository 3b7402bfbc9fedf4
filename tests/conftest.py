import atexit
import os
import shutil
import tempfile

# Tests of the parallel code need several devices; on CPU, XLA can fake them.
# Must be set before JAX is first imported anywhere in the session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MUJOCO_GL", "egl")

# The suite's time is compiling. One compilation cache per session, shared by the xdist workers
# and the processes the tests start (they inherit the variable): a program compiled again, as
# every tiny agent's train step is, or a resumed run's, is read back. Fresh each session, so the
# suite measures what a clean checkout takes; the session that made it (no xdist worker) removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="reverie-tests-jax-")
    if "PYTEST_XDIST_WORKER" not in os.environ:
        atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
