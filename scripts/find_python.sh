# Source this, then `find_python 3.12`: prints the path of a working Python X.Y interpreter (or nothing, exit 1).
# Looks at $DPM_PYTHON<XY> (e.g. DPM_PYTHON312), pythonX.Y on PATH (a pyenv shim counts only if it really runs),
# then pyenv's and deadsnakes-style install folders.
find_python() {
  local want=$1 var="DPM_PYTHON${1/./}" c
  local -a cands=("${!var:-}" "python$want" /usr/bin/"python$want" /usr/local/bin/"python$want")
  local root; root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for c in "$root"/versions/"$want"*/bin/"python$want"; do cands+=("$c"); done
  for c in "${cands[@]}"; do
    [ -n "$c" ] || continue
    if "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))" 2>/dev/null; then
      "$c" -c 'import sys; print(sys.executable)'; return 0
    fi
  done
  return 1
}
