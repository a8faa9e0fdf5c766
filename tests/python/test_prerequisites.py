"""tests/prerequisites.sh, which `make test` runs first: it installs with apt-get only what is
missing (nothing at all when nothing is), as root or through sudo, and otherwise exits 1 naming
the packages. Most cases run it in a made-up machine: PATH holds only stand-ins (id, sudo,
apt-get, the commands the suites call), PYTHON and CC are stand-ins whose imports and headers
exist once their package is "installed", and the stand-in apt-get records its calls and installs
by creating what each package brings. The last case runs it on this machine as it is."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "prerequisites.sh"

# every package the script knows, and the command each brings (None: a module or a header)
PACKAGES = {"python3-numpy": None, "python3-torch": None, "python3-torchvision": None,
            "python3-onnx": None,
            "python3-pytest": None, "python3-mpi4py": None, "openmpi-bin": "mpirun",
            "libopenmpi-dev": "mpicc",
            "libcjson-dev": None, "pkgconf": "pkg-config", "strace": "strace",
            "util-linux": "setpriv", "nodejs": "node", "npm": "npm"}

# the stand-in apt-get: logs "DEBIAN_FRONTEND ARGS"; `install` creates what each package brings
# (a marker in state/, its command in bin/), except the packages in FAKE_BROKEN
FAKE_APT = """#!{python}
import os, sys
from pathlib import Path
root = Path(os.environ["FAKE_ROOT"])
with open(root / "apt.log", "a") as log:
    log.write(os.environ.get("DEBIAN_FRONTEND", "-") + " " + " ".join(sys.argv[1:]) + "\\n")
commands = {commands!r}
if sys.argv[1] == "install":
    for p in sys.argv[2:]:
        if not p.startswith("-") and p not in os.environ.get("FAKE_BROKEN", "").split():
            (root / "state" / p).touch()
            if commands[p]:
                (root / "bin" / commands[p]).write_text("#!/bin/sh\\n")
                (root / "bin" / commands[p]).chmod(0o755)
sys.exit(int(os.environ.get("FAKE_APT_EXIT", "0")))
"""

# the stand-in python: `-c "import M"` succeeds when python3-M is installed
FAKE_PYTHON = """#!/bin/sh
[ "$1" = -c ] && [ -e "$FAKE_ROOT/state/python3-${2#import }" ]
"""

# the stand-in compiler: -include cjson/cJSON.h succeeds when libcjson-dev is installed
FAKE_CC = """#!/bin/sh
for a; do [ "$a" = cjson/cJSON.h ] && { [ -e "$FAKE_ROOT/state/libcjson-dev" ]; exit; }; done
exit 1
"""

# sudo: logged, then the command with the VAR=value words before it in its environment
FAKE_SUDO = """#!/bin/sh
echo "sudo $*" >> "$FAKE_ROOT/apt.log"
while [ $# -gt 0 ]; do case $1 in *=*) export "$1"; shift ;; *) break ;; esac; done
exec "$@"
"""


def tool(path, text):
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """machine(installed, uid=0, sudo=False, apt=True, **env) runs the script in a made-up
    machine where the packages `installed` are; returns (result, apt log lines)."""
    def run(installed, uid=0, sudo=False, apt=True, **env):
        root = tmp_path / "m"
        (root / "state").mkdir(parents=True)
        (root / "bin").mkdir()
        tool(root / "bin" / "id", f"#!/bin/sh\necho {uid}\n")
        if sudo:
            tool(root / "bin" / "sudo", FAKE_SUDO)
        if apt:
            tool(root / "bin" / "apt-get", FAKE_APT.format(python=sys.executable,
                                                            commands=PACKAGES))
        tool(root / "python", FAKE_PYTHON)
        tool(root / "cc", FAKE_CC)
        for p in installed:
            (root / "state" / p).touch()
            if PACKAGES[p]:
                tool(root / "bin" / PACKAGES[p], "#!/bin/sh\n")
        environ = dict(PATH=str(root / "bin"), FAKE_ROOT=str(root), PYTHON=str(root / "python"),
                       CC=str(root / "cc"), **env)
        r = subprocess.run(["/bin/sh", str(SCRIPT)], env=environ, capture_output=True, text=True,
                           timeout=60)
        log = root / "apt.log"
        return r, log.read_text().splitlines() if log.exists() else []
    return run


def all_but(*missing):
    return [p for p in PACKAGES if p not in missing]


def test_nothing_missing_calls_no_apt(machine):
    r, log = machine(all_but())
    assert (r.returncode, r.stdout, r.stderr, log) == (0, "", "", [])


def test_installs_only_what_is_missing_as_root(machine):
    r, log = machine(all_but("python3-torch", "libcjson-dev", "strace"))
    assert r.returncode == 0, r.stderr
    assert log == ["noninteractive update -q",
                   "noninteractive install -y -q --no-install-recommends "
                   "python3-torch libcjson-dev strace"]
    assert r.stdout == "prerequisites: installing python3-torch libcjson-dev strace\n"


def test_installs_everything_on_a_bare_machine_through_sudo(machine):
    r, log = machine([], uid=1000, sudo=True)
    assert r.returncode == 0, r.stderr
    every = " ".join(PACKAGES)
    assert log == ["sudo DEBIAN_FRONTEND=noninteractive apt-get update -q",
                   "noninteractive update -q",
                   "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                   "--no-install-recommends " + every,
                   "noninteractive install -y -q --no-install-recommends " + every]


@pytest.mark.parametrize("uid, sudo, apt, why", [
    (1000, False, True, "not root, and no sudo"),
    (0, False, False, "no apt-get here"),
])
def test_cannot_install_names_the_packages(machine, uid, sudo, apt, why):
    r, log = machine(all_but("python3-mpi4py", "libopenmpi-dev"), uid=uid, sudo=sudo, apt=apt)
    assert r.returncode == 1 and log == []
    assert r.stderr == ("prerequisites: make test needs the Debian packages python3-mpi4py "
                        f"libopenmpi-dev ({why}); install them (apt-get install python3-mpi4py "
                        "libopenmpi-dev) and run make test again\n")


def test_failing_apt_get_names_the_packages(machine):
    r, log = machine(all_but("pkgconf"), FAKE_APT_EXIT="100")
    assert r.returncode == 1 and log == ["noninteractive update -q"]
    assert r.stderr.startswith("prerequisites: make test needs the Debian packages pkgconf "
                               "(apt-get failed); install them (apt-get install pkgconf)")


def test_an_install_that_does_not_help_names_what_is_still_missing(machine):
    """apt-get exits 0 but the check still fails (say PYTHON is not Debian's python3)."""
    r, log = machine(all_but("python3-numpy", "strace"), FAKE_BROKEN="python3-numpy")
    assert r.returncode == 1 and len(log) == 2
    assert r.stderr.startswith("prerequisites: make test needs the Debian packages python3-numpy "
                               "(still missing after apt-get install")


def test_this_machine_needs_nothing_more(tmp_path):
    """`make test` ran the script before this suite: on this machine, as it is, it now finds
    everything, and calls no apt-get (one is put first on PATH that would say so)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "sudo"):
        tool(bin_dir / name, f'#!/bin/sh\necho "{name} was called" >&2\nexit 1\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHON=sys.executable)
    r = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
