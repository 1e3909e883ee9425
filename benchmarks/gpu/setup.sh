# Sourced first in every device call, from the repo root:  source benchmarks/gpu/setup.sh
# Installs the carried wheels, points ssl_jax at the carried data, prints the machine and versions.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export SSL_JAX_FASHION_MNIST_DIR=$PWD/.gpudata TFDS_DATA_DIR=/tmp/tfds
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import jax, flax, optax, grain, tensorflow_datasets, ml_collections; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" || exit 1
git log --oneline -1 2>/dev/null || true
