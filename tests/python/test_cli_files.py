"""How every command opens its inputs and writes its outputs, one rule for `normalize`, `apply`
and `fit` alike: an empty file name is a usage error.
"""
import os
import subprocess

import pytest

from test_cli import BNORM

QUICK = 20  # seconds: a command that should fail at once, killed (and the test failed) if it waits


def run(*args, timeout=QUICK, **kwargs):
    return subprocess.run([str(BNORM), *map(str, args)], capture_output=True, timeout=timeout,
                          **kwargs)


# --- empty names ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["normalize", "IN.npy", "-o", ""], "--output: the file name is empty"),
    (["normalize", "IN.npy", "--output="], "--output: the file name is empty"),
    (["normalize", "", "-o", "OUT.npy"], "an input file name is empty"),
    (["normalize", "IN.npy", "-o", "OUT.npy", "--weight", ""], "--weight: the file name is empty"),
    (["normalize", "IN.npy", "-o", "OUT.npy", "--bias="], "--bias: the file name is empty"),
    (["apply", "--stats", "S", "IN.npy", "-o", ""], "--output: the file name is empty"),
    (["apply", "--stats", "", "IN.npy", "-o", "OUT.npy"], "--stats: the file name is empty"),
    (["apply", "--stats", "S", "", "-o", "OUT.npy"], "an input file name is empty"),
    (["fit", "IN.npy", "--out", ""], "--out: the file name is empty"),
    (["fit", "IN.npy", "-o", ""], "--out: the file name is empty"),
    (["fit", "IN.npy", "", "--out", "S"], "an input file name is empty"),
])
def test_empty_file_names_are_usage_errors(tmp_path, args, message):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.decode()
    assert err.startswith(f"bnorm: {args[0]}: {message}\nusage: bnorm {args[0]}"), err
    assert os.listdir(tmp_path) == []
