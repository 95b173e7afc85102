#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before lending time on one: puts what the bare GPU image
# lacks into two git-ignored folders that the device tool carries: data/ (the Fashion-MNIST IDX
# files, found there by the default search path) and .whl/ (omegaconf; the image has torch, torchvision, tqdm, matplotlib and tensorboard). Then, on the device:
#   run(command="bash benchmarks/gpu.sh", carry=["data", ".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p data/FashionMNIST/raw .whl
cp "$SRC"/*-ubyte.gz data/FashionMNIST/raw/
PIP=${PIP:-.venv/bin/pip}
# the version installed here (pure Python; it needs only PyYAML, which the image has)
"$PIP" download --no-deps -d .whl "omegaconf==$("$PIP" show omegaconf | sed -n 's/^Version: //p')"
ls -la data/FashionMNIST/raw .whl
