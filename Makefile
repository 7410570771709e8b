# Two commands on a fresh Debian machine: `make demo` and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/install.sh
	bash scripts/install.sh

demo: $(STAMP)
	$(VENV)/bin/bljust demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
