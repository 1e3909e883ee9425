"""Test setup shared by every test module.

Eight fake CPU devices are made before JAX is imported anywhere, so data-parallel code (a mesh over
8 devices, shard_map, pmap) is tested in the same process as single-device code; computations that
do not ask for a mesh still run on device 0 only.

Compiled programs go to a persistent compilation cache made for this test session (and removed at
its end), which the ``ssl-jax`` processes that tests start inherit through the environment: a
killed run's restart, or the second of two processes, loads the train step the first compiled
instead of compiling it again (one tiny pretraining process took 16.6 s without
it, 3.5 s with it on the 2-core CPU). The cache only skips compilations; what the programs
compute is unchanged.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="ssl_jax_tests_jit_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


import pytest  # noqa: E402
from jax.sharding import AxisType  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Drop every compiled program when a test module ends (``jax.clear_caches``). XLA:CPU maps
    each executable's code into memory, and the whole suite in one process went past the
    kernel's limit of 65,530 mappings (``vm.max_map_count``): two modules of ViT/DINO tests
    alone left 5,400 mappings (700 after clearing), and the full suite crashed at ~93% inside
    XLA (an abort in executable deserialization, then segfaults in compilation). Later modules
    recompile what they need, from the persistent cache above when it has it."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="module", params=["explicit", "auto"])
def mesh(request):
    """The 8 fake devices as a 1-D ``'data'`` mesh, once with ``jax.make_mesh``'s default
    (Explicit) axis types and once with Auto axes: the losses must be right on both. A module
    may define its own ``mesh`` instead."""
    assert jax.device_count() == 8, "the 8 fake CPU devices above are missing"
    if request.param == "explicit":
        m = jax.make_mesh((8,), ("data",))
        assert m.axis_types == (AxisType.Explicit,)
        return m
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


@pytest.fixture
def vit_micro():
    """A 2-block, width-16 ViT registered as the encoder ``vit_micro`` (the registry is the
    plug-in point): a ViT through a method at a fraction of ViT-Tiny's compile time."""
    import functools

    from ssl_jax.models.registry import ENCODERS, EncoderEntry
    from ssl_jax.models.vit import VisionTransformer, ViTSettings

    build = functools.partial(VisionTransformer, width=16, depth=2, heads=2)
    ENCODERS.add("vit_micro", EncoderEntry(block="vit", settings=ViTSettings, constructor=build))
    yield "vit_micro"
    ENCODERS.remove("vit_micro")
