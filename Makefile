# saia-ctl: the commands the README names.
#   make setup   system packages (root, Debian), .venv, editable install, bytecode
#   make test    setup, then the whole suite incl. the real-cluster tests
#   make demo    setup, then scripts/demo.sh
#   make lint    ruff check, ruff format --check, mypy, alembic check
#   make bench   bench/run
# To reuse a running dev cluster in `make test`:
#   scripts/dev-cluster.sh up /tmp/saia-dev-cluster
#   SAIA_TEST_CLUSTER=/tmp/saia-dev-cluster make test

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup test demo lint bench

setup:
	scripts/setup.sh

# pytest exits 5 when it collected no tests: that is a failure too (make fails on any non-zero).
test: setup
	@rc=0; $(VENV)/pytest $(PYTEST_ARGS) || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

demo: setup
	scripts/demo.sh

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	@home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	  SAIA_HOME=$$home $(VENV)/alembic -c alembic.ini upgrade head && \
	  SAIA_HOME=$$home $(VENV)/alembic -c alembic.ini check

bench: setup
	bench/run
