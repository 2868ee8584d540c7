# The two commands a new machine needs (see README.md). Both run scripts/setup.sh first, which is
# idempotent: a second run only checks that everything is in place.
.PHONY: run test setup lint bench

setup:
	@./scripts/setup.sh

run: setup
	.venv/bin/aifleet demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/pytest -q -p no:cacheprovider
	./scripts/audit.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

bench: setup
	.venv/bin/aifleet bench --requests 5000 --concurrency 200
