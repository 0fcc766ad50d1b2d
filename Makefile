# The two commands of the README, plus helpers. Each sets itself up on a fresh machine.
.PHONY: run test setup bench lock clean

run: setup            ## the main job, end to end on embedded defaults
	.venv/bin/cmrops demo

test:                 ## the whole test suite (what CI runs)
	scripts/test.sh

setup:
	scripts/bootstrap.sh

bench: setup          ## benchmarks against the named baselines (prints tables)
	.venv/bin/python benches/bench_core.py

lock:                 ## re-pin requirements/lock.txt after editing requirements.in
	.venv/bin/uv pip compile requirements/requirements.in -o requirements/lock.txt \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28

clean:
	rm -rf .venv target
