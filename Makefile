# Two commands on a fresh Debian machine: `make demo` and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/install.sh
	bash scripts/install.sh

demo: $(STAMP)
	$(VENV)/bin/bljust demo

# Two workers (pytest-xdist), one torch thread each; a test file's tests stay on one worker, sharing its fixtures.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile
