"""Study files and processes: the folder lock, umask, leftover temporaries, per-cell checkpoints,
pool workers that exit with their driver."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from pyro_bdl._util import io
from pyro_bdl.studies import TemperatureStudy

from test_studies import HERE, ROOT, cell_files, tiny, write_toml


def one_cell(out_dir, **inference):
    cfg = tiny(out_dir)
    cfg["inference"].update(methods=["map"], **inference)
    cfg["grid"]["temperature"] = [1.0]
    return cfg


def test_second_study_on_a_folder_is_stopped_and_a_dead_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": alive.pid, "host": os.uname().nodename}))
        with pytest.raises(io.FolderLocked, match=f"PID {alive.pid}.*{out}"):
            TemperatureStudy(one_cell(out), progress=False).run()
        assert cell_files(out) == []
    finally:
        alive.kill()
        alive.wait()
    # the holder is dead now: its stale lock is taken over, and released after the run
    df = TemperatureStudy(one_cell(out), progress=False).run()
    assert len(df) == 1 and not (out / ".lock").exists()


def test_lock_is_exclusive_within_a_process(tmp_path):
    with io.folder_lock(str(tmp_path)):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(io.FolderLocked, match="another run"):
            with io.folder_lock(str(tmp_path)):
                pass
    assert not (tmp_path / ".lock").exists()


def test_outputs_honour_the_umask_and_leftover_temporaries_are_removed(tmp_path):
    out = tmp_path / "run"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / ".tmp-killed.png").write_bytes(b"half a plot")
    old = os.umask(0o027)
    try:
        TemperatureStudy(one_cell(out), progress=False).run()
    finally:
        os.umask(old)
    assert not (out / "plots" / ".tmp-killed.png").exists()
    files = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs]
    assert files and {oct(os.stat(f).st_mode & 0o777) for f in files} == {oct(0o640)}


def test_checkpoint_option_is_scoped_per_cell(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(out)
    cfg["inference"] = {"methods": ["sgld"], "epochs": 3, "batch_size": 50, "predict_samples": 5,
                        "options": {"sgld": {"lr": 1e-4, "checkpoint": str(tmp_path / "ck" / "sgld.ckpt")}}}
    cfg["grid"]["temperature"] = [0.1, 1.0, 10.0]
    df = TemperatureStudy(cfg, progress=False).run()
    assert len(df) == 3 and df["nll"].nunique() == 3  # each cell its own fit, not the first cell's numbers
    assert len(os.listdir(tmp_path / "ck")) == 3


def _children(pid):
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="needs Linux /proc")
def test_pool_workers_exit_when_the_driver_is_killed(tmp_path):
    out = tmp_path / "run"
    path = write_toml(tmp_path / "study.toml", tiny(out, network="study_nets:gated_mlp"))
    env = dict(os.environ, STUDY_GATE_DIR=str(out),
               PYTHONPATH=os.pathsep.join([ROOT, HERE] + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "pyro_bdl.cli", "study", path, "--quiet", "--workers", "2"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not cell_files(out):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # a worker is now blocked in the gate
        children = _children(proc.pid)
        assert len(children) >= 2  # the two workers (and the resource tracker)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in children if _alive(p)]
    for p in left:  # do not leave them behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes {left} outlived their driver"
