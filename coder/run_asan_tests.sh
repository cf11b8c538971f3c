#!/usr/bin/env bash
# Builds aribbps._coder with -fsanitize=address,undefined into a scratch copy
# of the package and runs the coder's Python tests against it. Any sanitizer
# report aborts the run (halt_on_error), so a green run means no report.
set -euo pipefail
py=${1:-python3}
case "$py" in */*) py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/aribbps" "$root/coder" "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$work/"
rm -f "$work"/aribbps/_coder*.so
if ! (cd "$work" && ARIB_SANITIZE=1 "$py" setup.py -q build_ext --inplace >"$work/build.log" 2>&1); then
  cat "$work/build.log" >&2
  echo "run_asan_tests: building the sanitized extension failed" >&2
  exit 1
fi
asan_lib=$(g++ -print-file-name=libasan.so)
ubsan_lib=$(g++ -print-file-name=libubsan.so)
mkdir -p "$work/tests"
cp "$root/tests/test_coder.py" "$work/tests/"
cd "$work"
LD_PRELOAD="$asan_lib $ubsan_lib" \
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONPATH="$work" "$py" -c "import aribbps._coder as c, sys; assert c.__file__.startswith(sys.argv[1]), c.__file__; print(\"sanitized coder:\", c.__file__)" "$work"
LD_PRELOAD="$asan_lib $ubsan_lib" \
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONPATH="$work" "$py" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_coder.py
