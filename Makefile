# The two commands a new user needs: `make demo` and `make test`. Both run `setup` first; setup is
# idempotent and returns at once when nothing changed (a stamp file keyed on pyproject.toml).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
APT_PACKAGES := xvfb xauth libgl1 libgl1-mesa-dri libegl1 libusb-1.0-0 libgomp1

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# CPU machines take the local CPU build of torch; machines with an NVIDIA GPU take the default (CUDA) build.
	@if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	 else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: setup
	@$(BIN)/python -m engine.demo

test: setup
	@if [ -z "$$DISPLAY" ] && command -v xvfb-run >/dev/null; then \
	  xvfb-run -a -s "-screen 0 1600x900x24" $(BIN)/python -m pytest -q -m "not slow and not gpu"; \
	else $(BIN)/python -m pytest -q -m "not slow and not gpu"; fi

test-all: setup
	xvfb-run -a -s "-screen 0 1600x900x24" $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
