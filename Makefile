# Two commands do everything from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds that install offline here; override for other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: env test fuzz demo data smoke lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The property tests with fresh random draws, deep (CI's run is derandomized: tests/fuzz_settings.py)
FUZZ_EXAMPLES ?= 1500
fuzz: $(STAMP)
	CAMLT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz_images.py tests/test_fuzz_data.py tests/test_fuzz_config.py tests/test_fuzz_lists.py

# Fashion-MNIST from Debian's package when we may install it; else torchvision downloads it.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else echo "Fashion-MNIST not installed: the demo passes data.download=true"; fi

# Decided when the demo starts, after the data target has had its chance to install the package.
DEMO_DATA = $$([ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || echo data.download=true)

demo: $(STAMP) data
	$(BIN)/camlt train configs/fmnist_lt_demo.yaml $(DEMO_DATA) train.run_dir=runs/demo --resume

# One short real training + evaluation on Fashion-MNIST-LT (CI's smoke test).
smoke: $(STAMP) data
	rm -rf runs/smoke
	$(BIN)/camlt train configs/fmnist_lt.yaml train.epochs=1 train.progress=false train.run_dir=runs/smoke
	$(BIN)/camlt eval runs/smoke

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
