"""`import ssl_jax` stays light: losses, models and augmentation without the input pipeline."""

import subprocess
import sys


def test_import_ssl_jax_does_not_import_the_input_pipeline():
    code = (
        "import sys, ssl_jax\n"
        "heavy = ('grain', 'tensorflow_datasets', 'ssl_jax.data')\n"
        "assert not [m for m in heavy if m in sys.modules], sys.modules.keys() & set(heavy)\n"
        "ssl_jax.nt_xent, ssl_jax.get_encoder, ssl_jax.two_views\n"
        "from ssl_jax import load_encoder\n"  # imported on first use
        "assert 'ssl_jax.evaluation' in sys.modules and load_encoder is ssl_jax.load_encoder\n"
        "try:\n"
        "    ssl_jax.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_jitted_step_and_its_tools_import_without_the_input_pipeline():
    """The benchmarks compile ``ssl_jax.run.jit_train_step`` and read ``ssl_jax.profiling`` on a
    machine with only jax, flax, optax and orbax: neither may import grain or TFDS."""
    code = (
        "import sys\n"
        "import ssl_jax.run, ssl_jax.profiling, ssl_jax.methods.simclr, ssl_jax.methods.byol\n"
        "heavy = ('grain', 'tensorflow_datasets', 'ssl_jax.data', 'ssl_jax.checkpoint')\n"
        "assert not [m for m in heavy if m in sys.modules], sys.modules.keys() & set(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
