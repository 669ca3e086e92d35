"""Studies against an HMC reference and under covariate shift (Izmailov et al. 2021):
the [reference] and [evaluation] sections, reference cells, agreement / TV and shift columns,
reference diagnostics, resume, and the config schema's refusals."""
import os
import signal
import subprocess
import sys
import time
import tomllib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl import cli
from pyro_bdl.posterior.samples import SamplesPosterior
from pyro_bdl.studies import StudyConfig, StudyConfigError, TemperatureStudy
from pyro_bdl.studies.cells import reference_diagnostics

from test_studies import HERE, ROOT, cell_files, tiny, write_toml

pytest.importorskip("numpyro")


def tiny_reference(out_dir, network="mlp"):
    """``tiny`` plus a small NUTS reference (4 chains, NumPyro) and one corruption, on 4 PCA components."""
    cfg = tiny(out_dir, network)
    cfg["data"]["pca"] = 4
    cfg["grid"]["temperature"] = [1.0]
    cfg["reference"] = {"method": "nuts", "backend": "numpyro", "num_chains": 4, "warmup": 60, "num_samples": 60,
                        "diagnostic_inputs": 20}
    cfg["evaluation"] = {"corruptions": ["gaussian_noise"], "severities": [3]}
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny study with a reference and a corruption, run from the command line."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    path = write_toml(tmp / "study.toml", tiny_reference(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["study", path, "--quiet"]) == 0
    return out, pd.read_csv(out / "results.csv")


def test_tiny_study_with_a_reference_from_the_cli_has_the_new_columns(tiny_run):
    out, df = tiny_run
    assert len(df) == 3 and list(df["role"]).count("reference") == 1
    methods = df[df["role"] == "method"]
    assert set(methods["method"]) == {"map", "svi"}
    for column in ("agreement", "total_variation"):
        values = methods[column].to_numpy()
        assert np.isfinite(values).all() and ((0 <= values) & (values <= 1)).all(), (column, values)
    for column in ("accuracy_gaussian_noise_3", "nll_gaussian_noise_3"):
        assert np.isfinite(df[column]).all()
    assert ((df["accuracy_gaussian_noise_3"] >= 0) & (df["accuracy_gaussian_noise_3"] <= 1)).all()
    ref = df[df["role"] == "reference"].iloc[0]
    assert ref["method"] == "reference (nuts)"
    assert ref["r_hat_max"] >= 1.0 and ref["ess_bulk_min"] > 0 and ref["num_divergences"] >= 0
    assert ref["reference_converged"] == (ref["r_hat_max"] <= 1.01)
    assert np.isnan(ref["agreement"])  # the reference is not compared with itself in these columns
    # agreement is top-1 agreement: it matches the accuracies' difference bound |acc_a − acc_b| <= 1 − agreement
    for _, row in methods.iterrows():
        assert abs(row["accuracy"] - ref["accuracy"]) <= 1 - row["agreement"] + 1e-9
    report = (out / "report.md").read_text()
    assert "## The reference" in report and "agreement" in report and "(plots/agreement.png)" in report
    for name in ("agreement.png", "shift_T1.png"):
        assert (out / "plots" / name).stat().st_size > 5000


def test_reference_halves_agree_in_the_tiny_study(tiny_run):
    _, df = tiny_run
    ref = df[df["role"] == "reference"].iloc[0]
    assert ref["self_agreement"] > 0.9 and ref["self_total_variation"] < 0.1


def _posterior(samples_by_chain, hidden=4, seed=0):
    torch.manual_seed(seed)
    net = bdl.networks.mlp(3, [hidden], 4)
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
    return model, SamplesPosterior(model, samples_by_chain, method="nuts",
                                   sample_stats={"diverging": torch.zeros(4, samples_by_chain["0.weight"].shape[1])})


def _draws(model, chains, draws, offsets, scale=0.3, seed=0):
    """iid Gaussian weight draws around one point, chain c shifted by ``offsets[c]``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.net.named_parameters():
        centre = torch.randn(p.shape, generator=g)
        noise = scale * torch.randn((chains, draws) + tuple(p.shape), generator=g)
        out[name] = centre + noise + torch.tensor(offsets).reshape(chains, 1, *([1] * p.dim())) * torch.randn(
            (chains, 1) + tuple(p.shape), generator=g)
    return out


def test_reference_diagnostics_tell_a_converged_reference_from_chains_in_different_places():
    """Chains drawing iid from one distribution: R-hat ≈ 1, halves agree; chains whose weights sit
    in different places: R-hat far above 1.01, flagged, and the halves agree less."""
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    model, _ = _posterior({"0.weight": torch.zeros(4, 2, 4, 3)})
    good = SamplesPosterior(model, _draws(model, 4, 500, [0.0, 0.0, 0.0, 0.0]), method="nuts")
    figures = reference_diagnostics(good, x, None, 0, rhat_threshold=1.01, diagnostic_inputs=10)
    assert figures["r_hat_max"] < 1.01 and figures["converged"]
    assert figures["self_agreement"] > 0.95 and figures["self_total_variation"] < 0.03
    assert figures["ess_bulk_min"] > 1000 and figures["num_divergences"] == 0
    bad = SamplesPosterior(model, _draws(model, 4, 500, [0.0, 0.0, 2.0, 2.0]), method="nuts")
    figures = reference_diagnostics(bad, x, None, 0, rhat_threshold=1.01, diagnostic_inputs=10)
    assert figures["r_hat_max"] > 1.1 and not figures["converged"] and figures["r_hat_fraction_above"] > 0.5
    assert figures["self_agreement"] < 0.95


def test_a_killed_study_resumes_without_rerunning_the_reference(tmp_path, monkeypatch):
    """The reference cell runs first; kill the CLI while it builds the next cell's network; the
    rerun finds the reference's file, leaves it alone and compares the other cells with it."""
    out = tmp_path / "run"
    cfg = tiny_reference(out, network="study_nets:gated_mlp")
    cfg["reference"].update(num_chains=2, warmup=30, num_samples=30)  # resume mechanics, not convergence
    path = write_toml(tmp_path / "study.toml", cfg)
    env = dict(os.environ, STUDY_GATE_DIR=str(out),
               PYTHONPATH=os.pathsep.join([ROOT, HERE] + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "pyro_bdl.cli", "study", path, "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not cell_files(out):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the reference did not finish within 300 s"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = cell_files(out)
    assert len(first) == 1 and first[0].startswith("reference-nuts_T1_s0_noaug_"), first
    before = (out / "cells" / first[0]).read_bytes()

    monkeypatch.syspath_prepend(HERE)
    study = TemperatureStudy(path, progress=False)
    assert [s["method"] for s in study.pending()] == ["map", "svi"]  # the reference is done
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = study.run()
    assert (out / "cells" / first[0]).read_bytes() == before
    assert len(df) == 3 and df[df["role"] == "method"]["agreement"].between(0, 1).all()


def test_reference_per_temperature_and_shared_across_augmentation_for_full_batch_samplers():
    cfg = tiny_reference("unused")
    cfg["grid"]["temperature"] = [0.1, 1.0]
    cfg["data"].pop("pca")
    cfg["data"]["augment"] = [False, True]
    config = StudyConfig.from_dict(cfg)
    refs = bdl.studies.reference_specs(config)
    assert [(s["temperature"], s["augment"], s["compare"]) for s in refs] == [
        (0.1, False, [False, True]), (1.0, False, [False, True])]  # NUTS is full batch: no augmentation
    assert config.num_cells == 2 * 2 * 2 + 2 == len(bdl.studies.cell_specs(config))
    cfg["reference"] = {"method": "sghmc", "epochs": 2, "batch_size": 50}  # a minibatch sampler sees it
    refs = bdl.studies.reference_specs(StudyConfig.from_dict(cfg))
    assert sorted((s["temperature"], s["augment"]) for s in refs) == [(0.1, False), (0.1, True), (1.0, False),
                                                                      (1.0, True)]


def test_configs_without_the_new_sections_keep_their_cells():
    """Cells of a study without [reference]/[evaluation] keep the keys (hashes) they had before
    these sections existed, so an existing study's folder is not rerun."""
    config = StudyConfig.from_dict(tiny("x"))
    assert config.reference is None and config.evaluation is None
    assert [bdl.studies.cell_key(s) for s in bdl.studies.cell_specs(config)] == [
        "map_T0.1_s0_noaug_2a5636aa99", "map_T1_s0_noaug_7894a78808", "svi_T0.1_s0_noaug_b680e91ff8",
        "svi_T1_s0_noaug_141e6c03b8"]


def test_reference_defaults_are_nuts_on_numpyro_with_four_chains():
    cfg = tiny("x")
    cfg["reference"] = {}
    ref = StudyConfig.from_dict(cfg).reference
    assert ref.method == "nuts" and ref.options == {"backend": "numpyro", "num_chains": 4}
    assert ref.rhat_threshold == 1.01 and ref.predict_samples is None


# -- bad [reference] / [evaluation] sections: each one clear error --------------------------------
def _with(change):
    cfg = tiny("unused")
    cfg["reference"] = {"num_samples": 10, "warmup": 10}
    cfg["evaluation"] = {"corruptions": ["shift"]}
    change(cfg)
    return cfg


BAD = {
    "reference option typo": (lambda c: c["reference"].update(num_chain=2),
                              r"\[reference\] unknown option 'num_chain'; did you mean 'num_chains'"),
    "option of another method": (lambda c: c["reference"].update(method="map") or c["reference"].pop("warmup"),
                                 r"\[reference\] unknown option 'num_samples'"),
    "unknown reference method": (lambda c: c["reference"].update(method="hmcc"),
                                 r"\[reference\] method must be one of .*nuts.*; did you mean 'hmc'"),
    "option of the wrong type": (lambda c: c["reference"].update(num_chains="four"),
                                 r"\[reference\] num_chains must be an integer \(nuts's default is 1\), got 'four'"),
    "bad R-hat threshold": (lambda c: c["reference"].update(rhat_threshold=0.99),
                            r"\[reference\] rhat_threshold must be a number >= 1, got 0.99"),
    "reference not a table": (lambda c: c.update(reference="nuts"), r"\[reference\] must be a table of keys"),
    "reference on regression": (lambda c: c["data"].update(name="diabetes", train_size=100),
                                r"\[reference\] compares top-class agreement .* 'diabetes' is a regression data set"),
    "unknown corruption": (lambda c: c["evaluation"].update(corruptions=["blur"]),
                           r"\[evaluation\] corruptions must be a non-empty list of corruption kinds \('blur' is not "
                           r"one of gaussian_noise, shift, translate"),
    "severity out of range": (lambda c: c["evaluation"].update(severities=[1, 6]),
                              r"\[evaluation\] severities must be .*6 is not an integer from 1 to 5"),
    "no corruptions": (lambda c: c["evaluation"].pop("corruptions"), r"\[evaluation\] corruptions is required"),
    "evaluation key typo": (lambda c: c["evaluation"].update(severity=[1]),
                            r"\[evaluation\] unknown key 'severity'; did you mean 'severities'"),
    "translate on tables": (lambda c: c["data"].update(name="wine", train_size=100)
                            or c["evaluation"].update(corruptions=["translate"]),
                            r"'translate' moves images; 'wine' is not an image data set"),
    "pca too large": (lambda c: c["data"].update(pca=65), r"\[data\] pca = 65 exceeds the 64 features"),
    "pca with augmentation": (lambda c: c["data"].update(pca=8, augment=[False, True]),
                              r"\[data\] augment shifts pixels, which the pca projection no longer has"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_reference_or_evaluation_section_gives_one_clear_error(case):
    change, message = BAD[case]
    with pytest.raises(StudyConfigError, match=message) as info:
        StudyConfig.from_dict(_with(change))
    assert len(info.value.problems) == 1, info.value.problems


def test_every_problem_of_every_section_at_once(tmp_path, capsys):
    cfg = _with(lambda c: (c["reference"].update(num_chain=2, rhat_threshold=0), c["evaluation"].update(
        corruptions=["blur"], severities=[0]), c["grid"].update(temperature=[0.0]), c["inference"].update(epoch=2)))
    with pytest.raises(StudyConfigError) as info:
        StudyConfig.from_dict(cfg)
    assert len(info.value.problems) == 6, info.value.problems
    out = tmp_path / "never"
    cfg["output"]["dir"] = str(out)
    assert cli.main(["study", write_toml(tmp_path / "bad.toml", cfg)]) == 2
    assert "bad.toml has 6 problems" in capsys.readouterr().err and not out.exists()


# -- network factories: validation imports nothing; running imports and checks ------------------
def test_validation_never_imports_a_network_factory(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_nets.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom pyro_bdl.examples.networks import mlp\n"
        "def make(in_features, out_features):\n    return mlp(in_features, [4], out_features)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny(tmp_path / "run", network="side_effect_nets:make")
    cfg["model"].pop("network_options")
    config = StudyConfig.from_dict(cfg)
    assert config.model.network == "side_effect_nets:make" and not marker.exists()
    bdl.studies.check_network(config)  # running the study imports it
    assert marker.exists()


@pytest.mark.parametrize("network, message", [
    ("no_such_pkg.nets:make", r"\[model\] network 'no_such_pkg.nets:make': cannot import module 'no_such_pkg.nets'"),
    ("pyro_bdl.examples.networks:resnet", r"module 'pyro_bdl.examples.networks' has no attribute 'resnet'"),
    ("torch.nn:Bilinear", r"network 'torch.nn:Bilinear' could not be built"),
])
def test_a_broken_factory_stops_the_run_before_any_file_is_written(tmp_path, network, message):
    cfg = tiny(tmp_path / "run", network=network)
    cfg["model"].pop("network_options")
    study = TemperatureStudy(cfg, progress=False)  # validation passes: the string has the right shape
    with pytest.raises(StudyConfigError, match=message):
        study.run()
    assert not (tmp_path / "run").exists()


def test_from_toml_is_a_deprecated_alias(tmp_path):
    path = write_toml(tmp_path / "s.toml", tiny(tmp_path / "run"))
    with pytest.warns(DeprecationWarning, match="load_config"):
        assert StudyConfig.from_toml(path) == bdl.studies.load_config(path)


def test_shipped_posteriors_example_is_valid():
    config = bdl.studies.load_config(bdl.studies.example_config("posteriors"))
    assert config.reference.method == "nuts" and config.reference.options["backend"] == "numpyro"
    assert config.evaluation.corruptions and config.data.pca
    # SG-MCMC keeps its adaptive defaults: a plain-kernel step such as lr = 1e-4 would be a
    # dimensionless step of 1e-4 under the "fisher" preconditioner (issue 13), and barely move
    for method in ("sgld", "sghmc", "csgmcmc"):
        assert "lr" not in config.inference.options.get(method, {})


def test_tutorial_page_shows_the_shipped_posteriors_config():
    """The toml block of docs/tutorials/hmc_reference.md is the example's config (every key it
    shows has the shipped value), so the page's tables describe the example users run."""
    page = open(os.path.join(ROOT, "docs", "tutorials", "hmc_reference.md")).read()
    block = page.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = tomllib.loads(block)
    with open(bdl.studies.example_config("posteriors"), "rb") as f:
        shipped = tomllib.load(f)
    for section, keys in shown.items():
        for key, value in keys.items():
            assert shipped[section][key] == value, f"[{section}] {key}: page {value!r}, shipped {shipped[section][key]!r}"


# -- PCA features -----------------------------------------------------------------------------
def test_pca_features_are_whitened_on_train_and_project_other_inputs_the_same_way():
    ds = bdl.data.load_dataset("digits", train_size=500)
    projected, project = bdl.data.pca_features(ds, 6)
    assert projected.x_train.shape == (500, 6) and projected.x_test.shape == (len(ds.x_test), 6)
    torch.testing.assert_close(projected.x_train.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(projected.x_train.std(0), torch.ones(6), atol=1e-3, rtol=0)
    cov = torch.cov(projected.x_train.T.double())
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 1e-4  # principal components are uncorrelated
    torch.testing.assert_close(project(ds.x_test), projected.x_test)
    # the first component carries the most variance of the original features
    first = (ds.x_train - ds.x_train.mean(0)) @ project.components[0]
    other = (ds.x_train - ds.x_train.mean(0)) @ project.components[-1]
    assert first.var() > other.var()
    with pytest.raises(ValueError, match="pca needs 1 <= k <= 64"):
        bdl.data.pca_features(ds, 65)


def test_the_config_docstring_documents_every_key_of_the_schema():
    from pyro_bdl.studies import config as config_module

    doc = config_module.__doc__
    for section in bdl.studies.SCHEMA:
        assert f"[{section.name}]" in doc, section.name
        body = doc.split(f"[{section.name}]", 1)[1]
        for key in section.keys:
            documented = f"{key.name} =" in body or f"[{section.name}.{key.name}." in doc  # a sub-table
            assert documented, f"[{section.name}] {key.name} is not in pyro_bdl.studies.config's docstring"


def test_cell_diagnostics_read_tensor_losses_of_ensembles():
    """Ensembles keep their losses as a (members, steps) tensor; the final loss is the mean of the last 5 %."""
    from types import SimpleNamespace

    from pyro_bdl.studies.cells import diagnostics

    losses = torch.stack([torch.linspace(10, 1, 100), torch.linspace(20, 3, 100)])
    post = SimpleNamespace(method="ensemble", info={"losses": losses, "seed": 0})
    assert diagnostics(post)["final_loss"] == pytest.approx(float(losses[:, -5:].mean()))
    post = SimpleNamespace(method="map", info={"losses": [3.0, 2.0, 1.0]})
    assert diagnostics(post)["final_loss"] == 1.0
