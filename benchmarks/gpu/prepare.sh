#!/usr/bin/env bash
# Run HERE (the dev machine, with pip and the Debian Fashion-MNIST package), from the repo root:
#   bash benchmarks/gpu/prepare.sh
# Fills two git-ignored folders that a device call carries (carry: [".whl", ".gpudata"]):
#   .whl/      Python 3.12 wheels of what ssl_jax needs beyond the GPU image's jax/flax/optax/orbax
#   .gpudata/  the four Fashion-MNIST IDX files
# ~42 MB together, under the device tool's 64 MiB limit for what travels.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .git/info .whl .gpudata
for d in /.whl/ /.gpudata/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
platform=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform any)
# Missing from the image (checked 2026-11-22): the input pipeline, configs and their own needs.
python3 -m pip download -q --no-deps --only-binary=:all: "${platform[@]}" -d .whl \
  grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10 ml-collections==1.1.0 \
  dm-tree==0.1.10 simple-parsing==0.1.9 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2 \
  immutabledict==4.3.1 docstring-parser googleapis-common-protos portpicker importlib_resources
python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # sdist only on PyPI; pure Python
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .gpudata/  # apt-get install dataset-fashion-mnist
du -sh .whl .gpudata
