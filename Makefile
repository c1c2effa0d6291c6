.PHONY: test serve bench lint

# Every test suite, from a fresh machine (installs what it needs, starts services).
test:
	./scripts/test

# Install and run the demo server on :8080.
serve:
	python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/smartsocket serve

lint:
	.venv/bin/ruff check src tests bench && .venv/bin/mypy

# The benchmark suite (see bench/RESULTS.md); `make bench ARGS="ack --quick"` for a subset.
bench:
	.venv/bin/python -m bench run $(or $(ARGS),all)
