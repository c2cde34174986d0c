#!/usr/bin/env python3
"""Curated mutation check (`make mutate`): plant each bug of scripts/mutants.toml in a scratch copy of the tree and
run the tests that should catch it there; fail if any bug survives.

Every mutant replaces one exact text (`old`, which must occur exactly once in `file`, so a mutant cannot go stale
silently when the code changes) with `new`, then runs `scripts/test.sh -x <tests>` in the scratch copy. pytest's
exit status decides: 1 (a test failed) or 2 (collection error, e.g. a broken import) = killed; 0 = survived (a
skip counts as a pass: a bug that only makes tests skip survives); anything else (no tests collected, time-out) is
an error of the check itself. The working tree is never written: the copy is `git ls-files` (tracked and
untracked-not-ignored files) in a temporary folder, with `.venv` and `../shared` linked beside it as in a checkout.

A mutant with `collect_only = true` (a broken import) runs `pytest --collect-only` on its test files, and is killed
only when EVERY one of them fails to collect (a file that skips or imports nothing of it lets the mutant survive).

Before the mutants, the union of their tests runs once on the unmutated copy and must pass (else every "kill"
would be meaningless). Usage: scripts/mutate.py [--only ID ...] [--list] [--no-baseline] [--keep]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "scripts" / "mutants.toml"
KILLED_CODES = (1, 2)   # pytest: tests failed / interrupted (collection error)


def load(path: Path = MUTANTS) -> list[dict]:
    with open(path, "rb") as f:
        mutants = tomllib.load(f)["mutant"]
    seen = set()
    for m in mutants:
        missing = {"id", "file", "old", "new", "tests", "why"} - m.keys()
        if missing:
            raise SystemExit(f"mutants.toml: mutant {m.get('id', '?')} lacks {sorted(missing)}")
        if m["id"] in seen:
            raise SystemExit(f"mutants.toml: duplicate id {m['id']}")
        seen.add(m["id"])
    return mutants


def stale(mutants: list[dict], root: Path = ROOT) -> list[str]:
    """Mutants whose `old` text is not exactly once in their file (the code changed under them), or a no-op."""
    out = []
    for m in mutants:
        path = root / m["file"]
        if not path.is_file():
            out.append(f"{m['id']}: {m['file']} does not exist")
            continue
        n = path.read_text().count(m["old"])
        if n != 1:
            out.append(f"{m['id']}: the text to mutate occurs {n} times in {m['file']} (must be exactly once)")
        if m["old"] == m["new"]:
            out.append(f"{m['id']}: old == new")
        for t in m["tests"]:
            if not (root / t.split("::")[0]).is_file():
                out.append(f"{m['id']}: test file {t.split('::')[0]} does not exist")
    return out


def scratch_copy(dest: Path) -> Path:
    """Copy the tree's files (as git sees them) to dest/tree; link .venv and ../shared as in a checkout."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    tree = dest / "tree"
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.is_file():         # deleted but still in the index
            continue
        out = tree / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    if (ROOT / ".venv").exists():
        (tree / ".venv").symlink_to(ROOT / ".venv")
    if (ROOT.parent / "shared").exists():
        (dest / "shared").symlink_to(ROOT.parent / "shared")
    return tree


def run_tests(tree: Path, tests: list[str], timeout: float, collect_only: bool = False) -> tuple[int, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    mode = ["--collect-only"] if collect_only else ["-x"]
    cmd = ["scripts/test.sh", *mode, "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    try:
        p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return -1, f"timed out after {timeout:.0f} s\n{(e.stdout or b'')[-2000:]!r}"
    return p.returncode, p.stdout + p.stderr


def uncollected(output: str, tests: list[str]) -> list[str]:
    """The test files of ``tests`` that pytest --collect-only did NOT report as collection errors."""
    errors = set(re.findall(r"^ERROR (\S+\.py)", output, re.M))
    # launch_testing's pytest plugin (installed with the vendored ROS tools) turns a module that fails to import into
    # "found no collectors for <path>" and pytest exit code 4
    errors |= set(re.findall(r"found no collectors for \S*?/(test/\S+\.py)", output))
    return [t for t in tests if t.split("::")[0] not in errors]


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:160]
    return output.strip().splitlines()[-1][:160] if output.strip() else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (when you just ran it)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the clean-up of the scratch copy
    mutants = load()
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutants}
        if unknown:
            ap.error(f"unknown mutant ids: {sorted(unknown)}")
        mutants = [m for m in mutants if m["id"] in args.only]
    if args.list:
        for m in mutants:
            print(f"{m['id']:28s} {m['file']}: {m['why']}")
        return 0
    problems = stale(mutants)
    if problems:
        print("mutate: stale mutants (update scripts/mutants.toml to the code):", *problems, sep="\n  ")
        return 1
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="dpm-mutate-"))
    failed = []
    try:
        tree = scratch_copy(tmp)
        if not args.no_baseline:
            for collect in (False, True):
                union = sorted({t for m in mutants if m.get("collect_only", False) == collect for t in m["tests"]})
                if not union:
                    continue
                t0 = time.monotonic()
                rc, out = run_tests(tree, union, args.timeout * 2, collect_only=collect)
                print(f"baseline (no mutant{', collect only' if collect else ''}, {len(union)} test selections): "
                      f"rc {rc} in {time.monotonic() - t0:.0f} s", flush=True)
                if rc != 0:
                    print(out[-4000:])
                    print("mutate: the selected tests fail WITHOUT any mutant; fix that first")
                    return 1
        for m in mutants:
            path = tree / m["file"]
            original = path.read_text()
            path.write_text(original.replace(m["old"], m["new"], 1))
            t0 = time.monotonic()
            collect = m.get("collect_only", False)
            try:
                rc, out = run_tests(tree, m["tests"], args.timeout, collect_only=collect)
            finally:
                path.write_text(original)
            dt = time.monotonic() - t0
            missed = uncollected(out, m["tests"]) if collect else []
            if collect and rc == 4 and "found no collectors" in out:
                rc = 2   # collection errors reported through launch_testing's plugin (see uncollected)
            if collect and rc in KILLED_CODES and missed:
                verdict = "SURVIVED"
                failed.append(m["id"])
                out = f"collected without error (so a broken module would not fail them): {' '.join(missed)}"
                rc = 0
            elif rc in KILLED_CODES:
                verdict = "killed"
            elif rc == 0:
                verdict = "SURVIVED"
                failed.append(m["id"])
            else:
                verdict = f"ERROR (pytest rc {rc})"
                failed.append(m["id"])
            detail = first_failure(out) if rc else (out if missed else m['why'])
            print(f"{verdict:9s} {m['id']:28s} {dt:5.1f} s  {detail}", flush=True)
            if rc not in KILLED_CODES and rc != 0:
                print(out[-3000:])
    finally:
        if args.keep:
            print(f"scratch copy kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.monotonic() - t_start
    if failed:
        print(f"mutate: {len(failed)} of {len(mutants)} planted bugs NOT caught: {', '.join(failed)} "
              f"({total:.0f} s)")
        return 1
    print(f"mutate: all {len(mutants)} planted bugs caught ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
