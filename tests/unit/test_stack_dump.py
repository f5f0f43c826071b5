"""``kill -USR1`` on a ``buildflow run`` prints every thread's stack and the run goes on
(:func:`buildflow.cli.run.dump_stacks_on_sigusr1`)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")

WAITER = """
import sys, threading
from buildflow.cli.run import dump_stacks_on_sigusr1

def waiting_for_the_broker():
    threading.Event().wait()

assert dump_stacks_on_sigusr1()
threading.Thread(target=waiting_for_the_broker, name="kafka-io", daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()   # blocks until the test says go on
print("still running", flush=True)
"""


def test_sigusr1_prints_every_threads_stack_and_the_process_goes_on() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WAITER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGUSR1)
            dump = []
            for line in proc.stderr:  # the dump is written by the signal handler, at once
                dump.append(line)
                if "<module>" in line:  # the main thread's outermost frame: the end of the dump
                    break
            proc.stdin.write("go on\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "still running\n"
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = "".join(dump)
    assert "waiting_for_the_broker" in text  # another thread's stack, not only the main one
    assert "Current thread 0x" in text and text.count("hread 0x") >= 2
