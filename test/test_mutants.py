"""scripts/mutants.toml stays in step with the code: every planted bug still applies to exactly one place and names
test files that exist (`make mutate` then checks that each one is caught)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("dpm_mutate", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutate)


def test_every_mutant_applies_exactly_once():
    mutants = mutate.load()
    assert len(mutants) >= 20
    assert mutate.stale(mutants) == []


def test_stale_mutant_is_reported(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "t.py").write_text("")
    m = [{"id": "twice", "file": "a.py", "old": "x = 1", "new": "x = 2", "tests": ["t.py"]},
         {"id": "gone", "file": "a.py", "old": "y = 1", "new": "y = 2", "tests": ["missing.py"]}]
    out = mutate.stale(m, tmp_path)
    assert any("twice" in o and "2 times" in o for o in out) and any("gone" in o and "0 times" in o for o in out)
    assert any("missing.py" in o for o in out)


def test_collect_only_needs_every_file_to_error():
    out = "ERROR test/test_a.py - ModuleNotFoundError\nERROR test/test_b.py\n"
    assert mutate.uncollected(out, ["test/test_a.py", "test/test_b.py"]) == []
    assert mutate.uncollected(out, ["test/test_a.py", "test/test_c.py"]) == ["test/test_c.py"]
