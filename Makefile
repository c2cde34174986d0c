# The two commands of README's first screen. Both set up everything first (scripts/setup.sh is idempotent).
.PHONY: setup demo test mutate bench clean
VENV ?= .venv

setup:
	@scripts/setup.sh

demo: setup
	@bash -c '. scripts/ros_env.sh && $(VENV)/bin/dpm demo --out demo_out'

# The Kilted suite (.venv), then the Jazzy part (.venv-jazzy, Python 3.12) and the Python 3.10 core part
# (.venv-py310, Humble/JetPack 6 minimum libraries); each extra part skips, saying why, without its interpreter.
test: setup
	@$(VENV)/bin/ruff check --quiet . && echo "ruff: all checks passed"
	@scripts/setup_jazzy.sh && scripts/setup_py310.sh
	@rc=0; scripts/test.sh || rc=1; scripts/test_jazzy.sh || rc=1; scripts/test_py310.sh || rc=1; exit $$rc

# Curated mutation check: each planted bug of scripts/mutants.toml must make its tests fail (scratch copy; 3.9 min
# on 2 loaded cores).
mutate: setup
	@$(VENV)/bin/python scripts/mutate.py

bench: setup
	@bash -c '. scripts/ros_env.sh && $(VENV)/bin/dpm bench geometry && $(VENV)/bin/dpm bench engine'

clean:
	rm -rf build demo_out .pytest_cache
