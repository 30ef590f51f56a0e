# Two commands do all their own set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install when the dependency list or these steps change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: demo test install bench clean

install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.*"
	# the Triton whose interpreter runs the triton store's tests on CPUs (and what the GPU machines have)
	$(PY) -m pip install -q --disable-pip-version-check "triton==3.6.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	# torchrec's metadata asks for the CUDA build of fbgemm-gpu; its real needs are in pyproject.toml.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "torchrec==1.8.0"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(PY) -m embtables.cli demo

bench: $(STAMP)
	$(PY) benchmarks/lookup_throughput.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
