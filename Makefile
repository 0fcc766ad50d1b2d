# The two commands of the README, plus helpers. Each sets itself up on a fresh machine.
.PHONY: run test setup demo bench dashboard screenshots docs docs-serve lock clean

run:                  ## the main job: the whole Airflow DAG on the built-in synthetic set, versioned with DVC
	scripts/main_job.sh

test:                 ## the whole test suite (what CI runs)
	scripts/test.sh

setup:
	scripts/bootstrap.sh

demo: setup           ## a short tour of the Hamming engine on generated codes
	.venv/bin/cmrops demo

bench: setup          ## benchmarks against the named baselines (prints tables)
	.venv/bin/python benches/bench_core.py

dashboard: setup      ## the Streamlit dashboard on http://127.0.0.1:8501 for CMROPS_PROJECT_DIR (default: here)
	.venv/bin/streamlit run dashboards/app.py --server.address 127.0.0.1

screenshots: setup    ## refresh docs/screenshots/*.png: every dashboard page on a fresh tiny run
	.venv/bin/python scripts/dashboard_screenshots.py

docs: setup           ## the documentation site into site/ (mkdocs build --strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

docs-serve: setup     ## the documentation site on http://127.0.0.1:8000, rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

lock:                 ## re-pin requirements/lock.txt after editing requirements.in
	.venv/bin/uv pip compile requirements/requirements.in -o requirements/lock.txt \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28

clean:
	rm -rf .venv target site
