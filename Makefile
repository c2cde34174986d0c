# The two commands of README's first screen. Both set up everything first (scripts/setup.sh is idempotent).
.PHONY: setup demo test bench clean
VENV ?= .venv

setup:
	@scripts/setup.sh

demo: setup
	@bash -c '. scripts/ros_env.sh && $(VENV)/bin/dpm demo --out demo_out'

test: setup
	@scripts/test.sh

bench: setup
	@bash -c '. scripts/ros_env.sh && $(VENV)/bin/dpm bench geometry && $(VENV)/bin/dpm bench engine'

clean:
	rm -rf build demo_out .pytest_cache
