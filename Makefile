# The two commands of README's first screen. Both set up everything first (scripts/setup.sh is idempotent).
.PHONY: setup demo test mutate bench clean
VENV ?= .venv

setup:
	@scripts/setup.sh

demo: setup
	@bash -c '. scripts/ros_env.sh && $(VENV)/bin/dpm demo --out demo_out'

test: setup
	@scripts/test.sh

# Curated mutation check: each planted bug of scripts/mutants.toml must make its tests fail (scratch copy; 3.9 min
# on 2 loaded cores).
mutate: setup
	@$(VENV)/bin/python scripts/mutate.py

bench: setup
	@bash -c '. scripts/ros_env.sh && $(VENV)/bin/dpm bench geometry && $(VENV)/bin/dpm bench engine'

clean:
	rm -rf build demo_out .pytest_cache
