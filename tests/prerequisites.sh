#!/bin/sh
# prerequisites.sh - what the suites of `make test` need, installed when it can be; run by
# `make test` before it builds. Each need is a check and the Debian package that meets it. With
# nothing missing it does nothing (no apt-get at all). With something missing, on Debian or
# Ubuntu as root or through sudo, it runs `apt-get update` and `apt-get install` of the missing
# packages only, then checks again. Where it cannot install, or the install does not help, it
# exits 1 naming the packages. PYTHON and CC are those of the suites (make passes its own).
set -u
PYTHON=${PYTHON:-/usr/bin/python3}
CC=${CC:-cc}

has_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }
has_command() { command -v "$1" >/dev/null 2>&1; }
# the Makefile's have_header: the header is named on the command line, no '#' to escape
has_header() { $CC -E -x c -include "$1" /dev/null >/dev/null 2>&1; }

# The packages whose check fails, in this order, separated by spaces.
missing() {
    m=
    has_module numpy || m="$m python3-numpy"
    has_module torch || m="$m python3-torch"
    has_module torchvision || m="$m python3-torchvision"  # FrozenBatchNorm2d against torchvision
    has_module onnx || m="$m python3-onnx"          # ONNX's reference for bnorm.onnx
    has_module pytest || m="$m python3-pytest"
    has_module mpi4py || m="$m python3-mpi4py"     # SyncBatchNorm under mpirun
    has_command mpirun || m="$m openmpi-bin"
    has_command mpicc || m="$m libopenmpi-dev"     # libbnorm_mpi and its tests
    has_header cjson/cJSON.h || m="$m libcjson-dev" # safetensors files of fit and apply
    # bnorm.torch's C++ path: torch's headers (with python3-dev, which libtorch-dev pulls in)
    # and pybind11's, which it does not
    [ -f /usr/include/torch/extension.h ] || m="$m libtorch-dev"
    [ -f /usr/include/pybind11/pybind11.h ] || m="$m pybind11-dev"
    has_command pkg-config || m="$m pkgconf"       # the installed bnorm.pc
    has_command strace || m="$m strace"            # how outputs are written
    has_command setpriv || m="$m util-linux"       # permission tests, run as nobody when root
    has_command node || m="$m nodejs"              # the JavaScript peers: ONNX Runtime, TF.js
    has_command npm || m="$m npm"
    echo "${m# }"
}

# fail WHY: exit 1, naming the packages still missing
fail() {
    echo "prerequisites: make test needs the Debian packages $packages ($1);" \
         "install them (apt-get install $packages) and run make test again" >&2
    exit 1
}

# The JavaScript peers (tests/peers/package.json, versions pinned by its package-lock.json),
# installed with npm from the npm registry into tests/peers/node_modules when they do not load.
# --ignore-scripts: onnxruntime-node's CPU library is in its package; its install script only
# fetches GPU parts.
case $0 in */*) PEERS=${0%/*}/peers ;; *) PEERS=peers ;; esac
has_peers() {
    (cd "$PEERS" && node -e "require('onnxruntime-node'); require('@tensorflow/tfjs')") \
        >/dev/null 2>&1
}
install_peers() {
    has_peers && return 0
    echo "prerequisites: installing the JavaScript peers (npm ci in $PEERS)"
    # npm trusts only the roots built into node unless told otherwise: where no cafile is set,
    # give it the system's store (Debian's, with any authority the machine's owner added there)
    if [ -z "${npm_config_cafile:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ] &&
       [ "$(cd "$PEERS" && npm config get cafile 2>/dev/null)" = null ]; then
        npm_config_cafile=/etc/ssl/certs/ca-certificates.crt
        export npm_config_cafile
    fi
    (cd "$PEERS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
        { echo "prerequisites: npm ci in $PEERS failed" >&2; exit 1; }
    has_peers || { echo "prerequisites: the JavaScript peers do not load after npm ci" >&2; exit 1; }
}

packages=$(missing)
if [ -z "$packages" ]; then
    install_peers
    exit 0
fi

if ! has_command apt-get; then
    fail "no apt-get here"
elif [ "$(id -u)" -eq 0 ]; then
    as_root=
elif has_command sudo; then
    as_root="sudo DEBIAN_FRONTEND=noninteractive"
else
    fail "not root, and no sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "prerequisites: installing $packages"
# shellcheck disable=SC2086 # $as_root and $packages are lists of words
if ! $as_root apt-get update -q ||
   ! $as_root apt-get install -y -q --no-install-recommends $packages; then
    fail "apt-get failed"
fi

packages=$(missing)
[ -z "$packages" ] || fail "still missing after apt-get install, for PYTHON=$PYTHON and CC=$CC"
install_peers
