# Set-up and everyday commands. `make test` and `make search` work on a fresh machine:
# they create .venv, install autoprune with its dev extra, then run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=
# Test files run in this many processes (pytest-xdist), a file's tests in one of them so that
# module fixtures are built once. Most tests wait on Ray and subprocesses, so 2 pays off on 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: install test search data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System packages some tests need, installed when missing and possible (root + apt):
# Fashion-MNIST (offline dataset) and headless Chromium (the browser test of pareto.html).
# Tests that need one say so and skip when it is absent.
SYSTEM_PACKAGES := dataset-fashion-mnist chromium chromium-driver
data:
	@missing=""; \
	test -f $(FASHION) || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$missing >/dev/null 2>&1; } || \
	    echo "note: could not install$$missing"; \
	  else echo "note: missing$$missing (apt-get install$$missing)"; fi; \
	fi

test: install data
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

search: install
	$(BIN)/autoprune search --space search_spaces/digits.yaml

clean:
	rm -rf $(VENV) .pytest_cache
