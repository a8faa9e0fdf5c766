#!/bin/sh
# run_all.sh - every suite of `make test`: the C tests, then the Python tests (bnorm's numpy API,
# bnorm.torch against live torch.nn, the `bnorm` command). A missing prerequisite fails the run
# and says what to install; nothing is skipped. Ends with one line: "N passed, N failed".
set -u
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${BUILD:-build}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

passed=0
failed=0

echo "== C tests"
"$BUILD/test_bnorm" | tee "$log"
c_status=$?
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
if [ -n "$line" ]; then
    passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
fi
[ "$c_status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=$((failed + 1))

echo "== Python tests"
if ! "$PYTHON" -c 'import numpy, torch, pytest' 2>/dev/null; then
    echo "run_all: $PYTHON lacks numpy, torch or pytest;" \
         "install them: apt-get install python3-numpy python3-torch python3-pytest" >&2
    failed=$((failed + 1))
else
    BNORM_LIBRARY="$PWD/$BUILD/libbnorm.so" BNORM_BUILD="$PWD/$BUILD" PYTHONPATH="$PWD/python" \
        "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/python 2>&1 | tee "$log"
    summary=$(grep -E '^=*.*[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
    for kind in passed failed error errors skipped; do
        n=$(echo "$summary" | grep -oE "[0-9]+ $kind\b" | cut -d' ' -f1)
        n=${n:-0}
        case $kind in
        passed) passed=$((passed + n)) ;;
        *) failed=$((failed + n)) ;; # an error or a skip is a failure here
        esac
    done
    [ -n "$summary" ] || failed=$((failed + 1))
fi

echo "== all suites"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
