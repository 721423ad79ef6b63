# Every target works from a fresh clone: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test up down status lint bench security deploy-check faults clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need on a bare machine: mongod links libcurl, the leadership-page
# test drives Debian's chromium. Installed only when missing, and only where we may (root+apt).
system-deps:
	@missing=""; \
	ldconfig -p | grep -q libcurl.so.4 || missing="$$missing libcurl4"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null)) || \
	     echo "warning: could not install$$missing"; \
	  else echo "warning: missing Debian packages:$$missing (tests needing them say so)"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/jinchui demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra

up: $(STAMP)
	$(BIN)/jinchui infra up

down: $(STAMP)
	$(BIN)/jinchui infra down

status: $(STAMP)
	$(BIN)/jinchui infra status

bench: $(STAMP)
	$(BIN)/jinchui bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services jinchui

# Crash, restart and poison the platform during a contest; exactly-once checks (jinchui faults).
faults: $(STAMP)
	$(BIN)/python -m jinchui.faults

clean:
	rm -rf $(VENV) .jinchui

# The security suite (also part of `make test`); ends with a line "N passed, N failed".
security: $(STAMP)
	$(BIN)/python -m jinchui.security

deploy-check: $(STAMP)
	$(BIN)/python -m jinchui.deploycheck
