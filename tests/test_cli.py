"""The command line: Ctrl-C on a study, option errors and help."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pyro_bdl import cli

from test_studies import HERE, ROOT, cell_files, tiny, write_toml


def test_ctrl_c_on_a_study_exits_130_without_traceback_and_the_rerun_numbers_on(tmp_path, monkeypatch, capsys):
    """SIGINT after the first of 4 cells: one line, exit code 130; the rerun goes on at [2/4]."""
    out = tmp_path / "run"
    path = write_toml(tmp_path / "study.toml", tiny(out, network="study_nets:gated_mlp"))
    marker = str(tmp_path / "blocked")  # the second cell's network build is waiting at the gate
    env = dict(os.environ, STUDY_GATE_DIR=str(out), STUDY_GATE_MARKER=marker,
               PYTHONPATH=os.pathsep.join([ROOT, HERE] + [os.environ.get("PYTHONPATH", "")]))
    # SIGINT's default action in the child: a suite started as a background job (`cmd &` without job control)
    # inherits SIGINT ignored, and a Python started that way never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "pyro_bdl.cli", "study", path], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not (cell_files(out) and os.path.exists(marker)):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no cell finished (and blocked at the gate) within 120 s"
            time.sleep(0.05)
        time.sleep(0.2)  # the marker is written just before the gate's sleep
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "interrupted after 1 of 4 cells; rerun the same command to resume" in stderr
    assert "[1/4]" in stdout
    assert len(cell_files(out)) == 1 and not [f for f in os.listdir(out / "cells") if f.startswith(".tmp")]

    monkeypatch.syspath_prepend(HERE)
    assert cli.main(["study", path]) == 0
    rerun = capsys.readouterr().out
    assert "1 cells already finished" in rerun
    assert "[1/4]" not in rerun and "[2/4]" in rerun and "[4/4]" in rerun
    assert len(cell_files(out)) == 4
