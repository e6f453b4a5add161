# `make demo` and `make test` set everything up on a fresh machine; both are idempotent.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch first, pinned: on these machines a CPU wheel of 2.13.0 lies in the local index (an unpinned
# torch pulled in by a dependency would be the 5 GB CUDA build).
TORCH   := torch==2.13.0

.PHONY: install data demo test bench train results clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[demo,eval,nudenet,dev]"
	touch $(STAMP)

data:
	@test -d $(FMNIST) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

demo: install data
	$(VENV)/bin/safe-denoiser demo --out demo-out

test: install data
	$(PY) -m pytest -q -n 2

bench: install data
	$(PY) benchmarks/estimators_toy.py --n 4000 --seeds 4 --jobs 2
	$(PY) benchmarks/toy_step_counts.py

# Retrain every bundled Fashion-MNIST model from scratch (long: about an hour on two CPU cores;
# not part of `make test`), then re-measure their quality into training.json and docs/results.
train: install data
	$(VENV)/bin/safe-denoiser train vae --overwrite --threads 1
	$(VENV)/bin/safe-denoiser train classifier --overwrite --threads 1
	$(VENV)/bin/safe-denoiser train text --overwrite --threads 1
	$(VENV)/bin/safe-denoiser train class --overwrite --threads 1
	$(PY) benchmarks/model_quality.py --write --out docs/results/model_quality.md --grid docs/results/model_samples.png

# Regenerate docs/results.md: every eval scenario and method on the bundled models (about 26
# minutes on two CPU cores). `python benchmarks/run_eval.py --render` only re-renders the page.
results: install data
	$(PY) benchmarks/run_eval.py

clean:
	rm -rf $(VENV) demo-out
