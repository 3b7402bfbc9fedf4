import os

# Tests of the parallel code need several devices; on CPU, XLA can fake them.
# Must be set before JAX is first imported anywhere in the session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MUJOCO_GL", "egl")
