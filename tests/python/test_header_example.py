"""The manual is bnorm.h's top comment: its example must compile and run against the built
library, and `make install` must give a working header, libraries, pkg-config file and command."""
import os
import re
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BNORM_BUILD", os.path.join(REPO, "build"))


def header_example():
    text = open(os.path.join(REPO, "include", "bnorm.h")).read()
    block = text.split(" * EXAMPLE", 1)[1].split(" */", 1)[0]
    lines = block.splitlines()[1:]  # drop the heading line
    code = "\n".join(re.sub(r"^ \*( {3})?", "", line) for line in lines)
    assert "int main(void)" in code
    return code


def compile_and_run(tmp_path, cflags, libs):
    src = tmp_path / "example.c"
    src.write_text(header_example())
    exe = tmp_path / "example"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", *cflags, str(src), "-o",
                    str(exe), *libs], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.match(r"y\[0\] = -?[0-9.e+-]+, dweight\[0\] = -?[0-9.e+-]+\n", out.stdout), out.stdout
    return out.stdout


def test_header_example_compiles_and_runs(tmp_path):
    compile_and_run(tmp_path, ["-I" + os.path.join(REPO, "include")],
                    [os.path.join(BUILD, "libbnorm.a"), "-fopenmp", "-lm"])


def test_make_install(tmp_path):
    prefix = tmp_path / "prefix"
    subprocess.run(["make", "-s", "-C", REPO, "install", "PREFIX=" + str(prefix),
                    "BUILD=" + BUILD], check=True, stdout=subprocess.DEVNULL)
    for path in ["include/bnorm.h", "lib/libbnorm.a", "lib/libbnorm.so", "lib/pkgconfig/bnorm.pc",
                 "bin/bnorm"]:
        assert (prefix / path).exists(), path
    pc = (prefix / "lib/pkgconfig/bnorm.pc").read_text()
    assert "prefix=" + str(prefix) in pc and "-lbnorm" in pc
    version = subprocess.run([str(prefix / "bin/bnorm"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert re.search(r"\d+\.\d+\.\d+", version)
    # link the example against the installed shared library with pkg-config's flags
    pkg = shutil.which("pkg-config")
    assert pkg, "pkg-config is needed: apt-get install pkgconf"
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib/pkgconfig"))
    flags = subprocess.run([pkg, "--cflags", "--libs", "bnorm"], capture_output=True,
                           text=True, check=True, env=env).stdout.split()
    cflags = [f for f in flags if f.startswith("-I")]
    libs = [f for f in flags if not f.startswith("-I")] + ["-lm", "-Wl,-rpath," + str(prefix / "lib")]
    compile_and_run(tmp_path, cflags, libs)
