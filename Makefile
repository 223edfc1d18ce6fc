# Set-up and everyday commands. `make test` and `make search` work on a fresh machine:
# they create .venv, install autoprune with its dev extra, then run.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: install test search data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST is a Debian package on these machines (offline). Installed when missing and
# possible; tests that need it say so when it is absent.
data:
	@test -f $(FASHION) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	  || echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"; }

test: install data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

search: install
	$(BIN)/autoprune search --space search_spaces/digits.yaml

clean:
	rm -rf $(VENV) .pytest_cache
