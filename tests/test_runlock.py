"""The run-directory lock: one writer per --out, the holder named, nothing left behind."""

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from g2rl_core.errors import ConfigError, G2RLError
from g2rl_core.runlock import LOCK_NAME, RunLockedError, run_lock

HOLD = """
import sys, time
from g2rl_core.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _hold_in_another_process(directory):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path):
    holder = _hold_in_another_process(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError) as err:
            with run_lock(tmp_path / "run"):
                pass
        message = str(err.value)
        assert isinstance(err.value, G2RLError) and "\n" not in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and str(tmp_path / "run") in message
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock
        holder.wait()
    with run_lock(tmp_path / "run") as path:
        assert path.read_text().startswith(f"pid {os.getpid()} on host ")
    assert path.read_text() == ""  # emptied on release: a finished run folder does not depend on who ran it


def test_nesting_in_one_thread_is_allowed_and_another_thread_is_refused(tmp_path):
    errors = []

    def other():
        try:
            with run_lock(tmp_path):
                pass
        except RunLockedError as err:
            errors.append(str(err))

    with run_lock(tmp_path):
        with run_lock(tmp_path):  # a command and the function it calls
            pass
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]
    with run_lock(tmp_path):  # released after the outer block
        pass


def test_unusable_directories_are_config_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        with run_lock(tmp_path / "file"):
            pass
    if os.geteuid() != 0:  # root writes anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="cannot write"):
                with run_lock(read_only):
                    pass
        finally:
            read_only.chmod(0o700)
    assert LOCK_NAME == ".g2rl.lock"
