"""Running a command that may hang (a rank left waiting, a FIFO nobody opens) without hanging
the suite: run_or_kill starts it in a session of its own and, past its deadline, kills every
process of that session and fails the test."""

import os
import signal
import subprocess

import pytest


def run_or_kill(cmd, timeout, why, **popen_args):
    """subprocess.run(cmd, capture_output=True, text=True, **popen_args), except that a command
    still running after timeout seconds is killed with all its children and fails the test with
    why, the time and the end of what it wrote on stderr (or stdout, where stderr is merged)."""
    popen_args.setdefault("stdout", subprocess.PIPE)
    popen_args.setdefault("stderr", subprocess.PIPE)
    p = subprocess.Popen(cmd, text=True, start_new_session=True, **popen_args)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail("%s: still running after %d s\n%s" % (why, timeout, (err or out)[-4000:]))
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
