"""`make install`: the Python package is installed beside the library, so that `import
bnorm.torch` works from any directory with no environment variable, loads the installed
libbnorm.so (and libbnorm_mpi.so), and a model saved with torch.save from a checkout loads and
runs there."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("BNORM_BUILD", REPO / "build"))
PACKAGE_VARS = ("BNORM_LIBRARY", "BNORM_MPI_LIBRARY", "PYTHONPATH", "LD_LIBRARY_PATH",
                "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(prefix, the directory holding the installed package) after make install PREFIX=..."""
    prefix = tmp_path_factory.mktemp("prefix")
    env = {k: v for k, v in os.environ.items() if k not in PACKAGE_VARS}
    subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), "install",
                    "PREFIX=" + str(prefix), "BUILD=" + str(BUILD), "PYTHON=" + sys.executable],
                   check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
    kind = "dist-packages" if "dist-packages" in sysconfig.get_path("purelib") else (
        "site-packages")  # Debian's interpreters, as the Makefile decides
    site = prefix / "lib" / ("python%d.%d" % sys.version_info[:2]) / kind
    assert (site / "bnorm" / "torch.py").exists(), sorted(str(p) for p in prefix.rglob("*.py"))
    return prefix, site


def run_installed(site, code, cwd):
    """code in a fresh interpreter that sees the installed package only (no checkout on its
    path, no bnorm environment variable); returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in PACKAGE_VARS}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_every_module_of_the_package_is_installed(installed):
    _, site = installed
    ours = sorted(p.name for p in (REPO / "python" / "bnorm").glob("*.py"))
    theirs = sorted(p.name for p in (site / "bnorm").glob("*.py"))
    assert theirs == sorted(ours + ["_installed.py"])


def test_import_loads_the_installed_libraries(installed, tmp_path):
    prefix, site = installed
    out = run_installed(site, (
        "import torch, bnorm, bnorm.torch as bt\n"
        "print(bnorm.__file__)\n"
        "print(bt._lib.path)\n"
        "from bnorm import _mpi; print(_mpi.load()._name)\n"
        "x = torch.randn(4, 3, 5, requires_grad=True)\n"
        "y = bt.BatchNorm1d(3)(x); y.sum().backward()\n"
        "print(y.grad_fn.name().replace(' ', ''))\n"
        "from bnorm import _functional; print(_functional.NATIVE.__file__)\n"), tmp_path)
    package, lib, mpi_lib, node, native = out.split()
    assert Path(package).parent == site / "bnorm"
    assert Path(lib) == prefix / "lib" / "libbnorm.so"
    assert Path(mpi_lib).parent == prefix / "lib"
    # the ordinary call through the C++ module installed with the package
    assert node == "bnorm::BatchNormBackward"
    assert Path(native) == site / "bnorm" / "_torch_native.so"


def test_a_saved_model_loads_where_bnorm_is_installed(installed, tmp_path):
    import torch
    import torch.nn as nn

    import bnorm.torch as bt
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bt.BatchNorm2d(4), nn.ReLU())
    model(torch.randn(2, 3, 6, 6))
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    torch.save({"model": model, "x": x, "y": model(x)}, tmp_path / "model.pt")
    out = run_installed(installed[1], (
        "import torch\n"
        "saved = torch.load('model.pt')\n"
        "m = saved['model']\n"
        "print(type(m[1]).__module__, torch.equal(m(saved['x']), saved['y']))\n"), tmp_path)
    assert out.split() == ["bnorm.torch", "True"]
