# The two commands of the README. Each creates .venv/ when missing and is safe to run again:
# the install step reruns only when pyproject.toml changes.
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: demo test bench

demo: $(VENV)/.installed
	$(PY) tools/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

# xtuner 0.2.0 pins bitsandbytes 0.45.0, which fails to import with this torch's triton
# ('No module named triton.ops'), and diffusers imports bitsandbytes when it is installed: 0.50.2
# replaces it (xtuner still imports; tests/test_environment.py checks both).
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[xtuner,dev]'
	$(PY) -m pip install -q 'bitsandbytes==0.50.2'
	touch $@
