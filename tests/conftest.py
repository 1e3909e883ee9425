"""Test setup shared by every test module.

Eight fake CPU devices are made before JAX is imported anywhere, so data-parallel code (a mesh over
8 devices, shard_map, pmap) is tested in the same process as single-device code; computations that
do not ask for a mesh still run on device 0 only.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
