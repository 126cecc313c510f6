# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench clean

install: $(STAMP)

# Re-installs only when the package description or the pins change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/artgen stylize styles/examples/chelsea.jpg --style swirls --size 384 -o out/demo.png --overwrite
	@echo "Your stylised picture: $(CURDIR)/out/demo.png  (see how it was made: $(VENV)/bin/artgen info out/demo.png)"

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check artgen tests benchmarks apps
	$(VENV)/bin/ruff format --check artgen tests benchmarks apps

bench: install
	$(PY) benchmarks/stylize_speed.py

clean:
	rm -rf $(VENV) out .pytest_cache
