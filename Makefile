# The two commands of the README:
#   make demo   create the environment if missing, then reproduce the whole pipeline on the demo data into runs/demo/
#   make test   create the environment if missing, then the hygiene check, nbdev_test and pytest
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test env hygiene nbtest pytest lab readme

env: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing dr-detection and its requirements into $(VENV) (about 2 minutes the first time) ..."
	@$(BIN)/pip install --quiet --progress-bar off --disable-pip-version-check -e ".[train,dev]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import dr_detection, torch, fastai, nbdev, papermill" 
	@touch $@

demo: env
	$(BIN)/dr-reproduce --config configs/demo.yaml --out runs/demo

test: env hygiene nbtest pytest

# After nbdev_export and nbdev_clean the git tree must be exactly as before: library and notebooks in sync, notebooks clean.
hygiene: env
	@before="$$(git status --porcelain; git diff)"; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean; \
	after="$$(git status --porcelain; git diff)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "hygiene: FAILED - nbdev_export/nbdev_clean changed the tree (library out of sync with nbs/, or notebooks not clean):"; \
	  git status --short; exit 1; \
	else echo "hygiene: ok (nbdev_export and nbdev_clean leave the tree unchanged)"; fi

nbtest: env
	$(BIN)/nbdev_test --n_workers 2 --timing $$(test -d ../shared/data && echo --flags realdata)

pytest: env
	$(BIN)/pytest -q tests

lab: env
	$(BIN)/jupyter lab nbs/

# README.md is made from nbs/index.ipynb (nbdev_readme needs Quarto, which this machine lacks).
readme: env
	$(BIN)/jupyter nbconvert --to markdown --stdout nbs/index.ipynb 2>/dev/null > README.md
