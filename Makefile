# fmnist: `make help` lists the targets. Everything runs inside .venv, created by `make install`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
MODEL ?= cnn
ARGS ?=
STORAGE ?= sqlite:///outputs/tune/$(MODEL)/optuna.db
# the speedrun's CPU trainer: bf16 where the CPU computes it natively (AVX512-BF16 or AMX), float32 elsewhere
SPEEDRUN_TRAINER ?= $(shell grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo cpu_bf16 || echo cpu_fast)
DATA_DIR := /usr/share/datasets/fashion-mnist
# wait for another apt/dpkg run to finish instead of failing on its lock
APT_WAIT := -o DPkg::Lock::Timeout=600
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install data train sweep tune dashboard reproduce bench bench-keras speedrun gpu-pack tensorboard lint test test-fast coverage clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: MODEL=cnn|rnn|bilstm|lstm|gru|attention|resnet  ARGS='hydra overrides'  TORCH='torch pip spec'  STORAGE=URL (dashboard)"

install: $(VENV)/.installed ## set up: Fashion-MNIST (apt), .venv with torch, fmnist and its dev tools

$(VENV)/.installed: pyproject.toml
	$(MAKE) data
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'  # a path entry (pyproject's package-dir): a clone named fmnist never shadows it
	touch $@

data: ## install the original Fashion-MNIST files (Debian package dataset-fashion-mnist; SKIP_DATA=1 skips it)
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST is in $(DATA_DIR)"; \
	elif [ "$(SKIP_DATA)" = 1 ]; then echo "SKIP_DATA=1: no data installed; train with data.download=true"; \
	else $(SUDO) apt-get $(APT_WAIT) update -q && $(SUDO) apt-get $(APT_WAIT) install -y -q dataset-fashion-mnist \
	|| { echo "error: apt-get could not install dataset-fashion-mnist and $(DATA_DIR) holds no data. Fix: run" \
	"make again once apt works, or make install SKIP_DATA=1 and train with data.download=true" >&2; exit 1; }; fi

train: install ## train MODEL with the study's recipe (ARGS: extra overrides, e.g. trainer.max_epochs=2)
	$(PY) -m fmnist.train model=$(MODEL) $(ARGS)

sweep: install ## one multirun of the three models (ARGS: extra overrides)
	$(PY) -m fmnist.train -m model=cnn,rnn,bilstm $(ARGS)

tune: install ## search MODEL's hyperparameters with Optuna (ARGS: tune.n_trials=20 pruner=hyperband, train overrides)
	$(PY) -m fmnist.tune model=$(MODEL) $(ARGS)

dashboard: install ## optuna-dashboard on http://127.0.0.1:8080 for a study's STORAGE (default: MODEL's SQLite file)
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port 8080 $(STORAGE)

reproduce: install ## the three study recipes x 3 seeds, then docs/RESULTS.md (hours on a CPU; ARGS: overrides)
	$(PY) -m fmnist.reproduce $(if $(ARGS),-- $(ARGS))

bench: install ## CPU epoch time: Lightning vs a plain PyTorch loop vs trainer=cpu_fast per model -> docs/BENCHMARKS.md
	$(PY) benchmarks/bench.py $(ARGS)

speedrun: install ## the speedrun's 93% CPU tier: 5 seeds, one CNN epoch and a plain loop for the ratios (docs/SPEEDRUN.md; ARGS: --experiment speedrun_94 ...)
	$(PY) benchmarks/speedrun.py --trainer $(SPEEDRUN_TRAINER) --seeds 5 --cnn-epoch --plain $(ARGS)

gpu-pack: install ## .whl/: the wheels and data a GPU lease needs beside the tree, checked against the 64 MiB that travel (docs/GPU.md)
	$(PY) benchmarks/lease_pack.py --out .whl --data $(DATA_DIR)

bench-keras: install .venv-keras/bin/python ## the same, plus the study's Keras models (tensorflow-cpu)
	$(PY) benchmarks/bench.py --paths lightning plain fast keras $(ARGS)

.venv-keras/bin/python:
	$(PYTHON) -m venv .venv-keras
	.venv-keras/bin/pip install -q tensorflow-cpu==2.21.0

tensorboard: install ## serve TensorBoard on every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

lint: install ## ruff (style, docstrings) and import-linter (the layers), as CI runs them before the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: install ## the whole suite on two workers, its slowest tests listed (what CI runs)
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15

coverage: install ## the whole suite with line coverage of fmnist/ per file (coverage.py's tracer: about 1.5x the time)
	$(PY) -m pytest -n 2 --dist loadgroup --cov --cov-report=term

test-fast: install ## the unit tier for the edit-test loop: no training of a real network, no subprocess
	$(PY) -m pytest -m "not slow" -n 2 -q

clean: ## delete run outputs and caches (keeps .venv and data/)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
