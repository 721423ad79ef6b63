# Every target works from a fresh clone: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test up down status lint bench security deploy-check faults clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jinchui demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

up: $(STAMP)
	$(BIN)/jinchui infra up

down: $(STAMP)
	$(BIN)/jinchui infra down

status: $(STAMP)
	$(BIN)/jinchui infra status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services jinchui

clean:
	rm -rf $(VENV) .jinchui
