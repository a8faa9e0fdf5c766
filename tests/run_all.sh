#!/bin/sh
# run_all.sh - every suite of `make test`: the C tests, the MPI tests under mpirun with 1 to 4
# ranks, then the Python tests (bnorm's numpy API, bnorm.torch against live torch.nn, SyncBatchNorm
# under mpirun, the `bnorm` command). A missing prerequisite fails the run
# and says what to install; nothing is skipped. Ends with one line: "N passed, N failed".
set -u
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
log=$(mktemp)
status=$(mktemp)
trap 'rm -f "$log" "$status"' EXIT

passed=0
failed=0

# A suite's own exit status (not tee's) is kept in $status: sh has no pipefail.
echo "== C tests"
{ "$BUILD/test_bnorm"; echo $? >"$status"; } | tee "$log"
c_status=$(cat "$status")
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
c_failed=0
if [ -n "$line" ]; then
    passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
    c_failed=$(echo "$line" | cut -d' ' -f3)
fi
# a crash, or a failing status with no failed check counted, is one failure more
[ "$c_status" -eq 0 ] && [ -n "$line" ] || [ "$c_failed" -gt 0 ] || c_failed=1
failed=$((failed + c_failed))

echo "== MPI tests (libbnorm_mpi under mpirun, 1 to 4 ranks)"
if ! command -v mpirun >/dev/null 2>&1 || [ ! -x "$BUILD/test_bnorm_mpi" ]; then
    echo "run_all: MPI is missing (mpirun, or $BUILD/test_bnorm_mpi, which make builds when it" \
         "finds mpicc); install it: apt-get install openmpi-bin libopenmpi-dev python3-mpi4py" >&2
    failed=$((failed + 1))
else
    for np in 1 2 3 4; do
        # as root Open MPI refuses to start without --allow-run-as-root; 2 cores, up to 4 ranks
        {
            timeout 600 mpirun --allow-run-as-root --oversubscribe -np "$np" \
                "$BUILD/test_bnorm_mpi" 2>&1
            echo $? >"$status"
        } | tee "$log"
        mpi_status=$(cat "$status")
        line=$(grep -E '^[0-9]+ ranks: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
        mpi_failed=0
        if [ -n "$line" ]; then
            passed=$((passed + $(echo "$line" | cut -d' ' -f3)))
            mpi_failed=$(echo "$line" | cut -d' ' -f5)
        fi
        [ "$mpi_status" -eq 0 ] && [ -n "$line" ] || [ "$mpi_failed" -gt 0 ] || mpi_failed=1
        failed=$((failed + mpi_failed))
    done
fi

echo "== Python tests"
if ! "$PYTHON" -c 'import numpy, torch, pytest' 2>/dev/null; then
    echo "run_all: $PYTHON lacks numpy, torch or pytest;" \
         "install them: apt-get install python3-numpy python3-torch python3-pytest" >&2
    failed=$((failed + 1))
else
    {
        BNORM_LIBRARY="$BUILD/libbnorm.so" BNORM_BUILD="$BUILD" PYTHONPATH="$PWD/python" \
            "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/python 2>&1
        echo $? >"$status"
    } | tee "$log"
    py_status=$(cat "$status")
    py_failed=0
    summary=$(grep -E '^=*.*[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
    for kind in passed failed error errors skipped; do
        n=$(echo "$summary" | grep -oE "[0-9]+ $kind\b" | cut -d' ' -f1)
        n=${n:-0}
        case $kind in
        passed) passed=$((passed + n)) ;;
        *) py_failed=$((py_failed + n)) ;; # an error or a skip is a failure here
        esac
    done
    [ "$py_status" -eq 0 ] && [ -n "$summary" ] || [ "$py_failed" -gt 0 ] || py_failed=1
    failed=$((failed + py_failed))
fi

echo "== all suites"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
