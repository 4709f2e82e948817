# The README's commands. Everything runs inside the project's virtual environment (.venv).
PY := .venv/bin/python

.PHONY: env demo test clean-env

env:  ## create or update .venv (torch, mmcv-full with ops, mmdet, nuscenes-devkit, OPS itself)
	bash tools/install_env.sh

demo: env  ## synthetic world -> infos -> train the demo config on CPU -> evaluate -> picture
	bash tools/run_demo.sh

test: env  ## lint (ruff, configured in pyproject.toml), then the test suite (CPU; GPU-only tests skip without a GPU)
	$(PY) -m ruff check .
	@# pytest exits 5 when it collected nothing: a broken suite, not a pass
	$(PY) -m pytest tests -q -rs; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$status

clean-env:
	rm -rf .venv
