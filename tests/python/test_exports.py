"""What the libraries export and what they need. libbnorm.so exports exactly the functions
include/bnorm.h declares (each marked BN_API), libbnorm_mpi.so exactly those of
include/bnorm_mpi.h; libbnorm_mpi.so uses the one libbnorm.so of the process (so that
bn_set_num_threads reaches the MPI calls), also once installed; libbnorm holds no file format
and needs nothing but libc, libm and OpenMP.

The Makefile builds libbnorm_mpi where it finds mpicc; MPI is required here as in
test_sync_batchnorm.py: a missing mpicc, or a libbnorm_mpi.so make did not build, fails."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if os.environ.get("BNORM_BUILD"):
    BUILD = Path(os.environ["BNORM_BUILD"])
elif os.environ.get("BNORM_LIBRARY"):
    BUILD = Path(os.environ["BNORM_LIBRARY"]).resolve().parent
else:
    BUILD = REPO / "build"
HAVE_MPI = shutil.which(os.environ.get("MPICC", "mpicc")) is not None

# a prototype at the start of a line (the manual's example, inside the top comment, is not)
PROTOTYPE = re.compile(r"^(BN_API )?(?:const )?\w+ \**(bn_\w+)\(", re.M)


def declared(header):
    """The functions header declares; every one of them must be marked BN_API."""
    found = PROTOTYPE.findall((REPO / "include" / header).read_text())
    unmarked = [name for mark, name in found if not mark]
    assert not unmarked, "%s: declared without BN_API: %s" % (header, unmarked)
    return {name for _, name in found}


def symbols(lib, *flags):
    """The dynamic symbols of lib (nm -D FLAGS), without version suffixes."""
    out = subprocess.run(["nm", "-D", *flags, str(lib)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def needed(lib):
    """The DT_NEEDED entries of lib."""
    out = subprocess.run(["objdump", "-p", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"^\s*NEEDED\s+(\S+)$", out, re.M)


def test_libbnorm_exports_exactly_bnorm_h():
    names = declared("bnorm.h")
    assert len(names) >= 15  # the regex found the header's functions
    assert symbols(BUILD / "libbnorm.so", "--defined-only") == names


def test_libbnorm_holds_no_file_format_and_needs_only_libc_libm_openmp():
    so = BUILD / "libbnorm.so"
    # glibc's dynamic loader, ld-linux, is glibc too: it serves the thread-local storage of the
    # thread-team test hook (__tls_get_addr)
    assert set(needed(so)) <= {"libc.so.6", "libm.so.6", "libgomp.so.1", "libomp.so.5",
                               "libomp.so", "ld-linux-x86-64.so.2"}, needed(so)
    # everything it calls comes from those libraries: no bn_ function is left for another one
    assert not {s for s in symbols(so, "--undefined-only") if s.startswith("bn_")}
    out = subprocess.run(["nm", "-A", str(BUILD / "libbnorm.a")], capture_output=True,
                         text=True, check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            (undefined if parts[-2] == "U" else defined).add(parts[-1])
    assert "bn_forward_train" in defined
    io_names = re.compile(r"^(bn_npy_|bn_io_|bn_write_output|bn_open_regular|"
                          r"bn_find_stale_temporary|bn_remove_output_temporary|cli_|cJSON_)")
    assert not {s for s in defined | undefined if io_names.match(s)}
    assert not {s for s in undefined - defined if s.startswith("bn_")}


def mpi_lib():
    assert HAVE_MPI, "mpicc is missing: apt-get install openmpi-bin libopenmpi-dev"
    lib = BUILD / "libbnorm_mpi.so"
    assert lib.exists(), "%s is missing (make builds it where mpicc is found)" % lib
    return lib


def test_libbnorm_mpi_exports_exactly_bnorm_mpi_h():
    lib = mpi_lib()
    assert symbols(lib, "--defined-only") == declared("bnorm_mpi.h")
    # it calls libbnorm.so's functions rather than holding them
    assert "libbnorm.so.%s" % version_major() in needed(lib)
    assert {"bn_compute_moments", "bn_forward_train_stats"} <= symbols(lib, "--undefined-only")


def version_major():
    text = (REPO / "include" / "bnorm.h").read_text()
    return re.search(r"#define BN_VERSION_MAJOR (\d+)", text).group(1)


# Loads the libraries as the python package does (or libbnorm_mpi.so alone), sets the thread
# count through libbnorm.so (or through whatever libbnorm_mpi.so brought in), and prints the
# count seen through libbnorm_mpi.so's handle (dlsym searches its dependencies) and the
# libbnorm files mapped into the process.
PROBE = r"""
import ctypes, os, sys
mpi_path, lib_path = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
lib = ctypes.CDLL(lib_path) if lib_path else None
mpi = ctypes.CDLL(mpi_path)
(lib or mpi).bn_set_num_threads(3)
maps = set()
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if os.path.basename(path).startswith("libbnorm"):
        maps.add(os.path.realpath(path))
print(mpi.bn_get_num_threads())
print("\n".join(sorted(maps)))
"""


def probe(*args, env=None):
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    return int(lines[0]), set(lines[1:])


def test_one_libbnorm_in_a_process_with_libbnorm_mpi():
    mpi = mpi_lib()
    so = BUILD / "libbnorm.so"
    # loaded after libbnorm.so, as bnorm._mpi does after bnorm._lib
    threads, maps = probe(mpi, so)
    assert threads == 3
    assert maps == {str(so.resolve()), str(mpi.resolve())}
    # loaded alone: it finds libbnorm.so beside it
    threads, maps = probe(mpi)
    assert threads == 3
    assert maps == {str(so.resolve()), str(mpi.resolve())}


def test_installed_libbnorm_mpi_loads_the_installed_libbnorm(tmp_path):
    mpi_lib()
    prefix = tmp_path / "prefix"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "LD_LIBRARY_PATH")}
    subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "install",
                    "PREFIX=" + str(prefix), "BUILD=" + str(BUILD)], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=600)
    lib = prefix / "lib"
    major = version_major()
    for name in ("libbnorm_mpi.so", "libbnorm_mpi.so." + major, "libbnorm.so." + major):
        assert (lib / name).exists(), name
    threads, maps = probe(lib / "libbnorm_mpi.so", env=env)
    assert threads == 3
    assert maps == {str((lib / name).resolve()) for name in ("libbnorm.so", "libbnorm_mpi.so")}
