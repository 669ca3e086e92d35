"""A temperature study's configuration: a TOML file (or the same nested dict), validated up front.

Every section and key, with its default::

    [study]
    name = "cold-digits"                  # default: the file's stem

    [data]
    name = "digits"                       # a bundled data set (pyro_bdl.data.DATASETS)
    augment = [false, true]               # a study dimension: bool or list of bools (default false)
    train_size = 1000                     # subsample the training split (default: all of it)
    test_fraction = 0.25
    split_seed = 0                        # the train/test split is fixed across cells
    max_shift = 1                         # augmentation: random shifts of ±max_shift pixels

    [model]
    network = "mlp"                       # or an import path "package.module:factory"
    hidden = [100, 100]                   # mlp only (default [100])
    activation = "tanh"                   # mlp only: "tanh" or "relu"
    network_options = {}                  # import path only: keyword arguments of the factory
    prior = "gaussian"                    # "gaussian", "fan_in", "laplace", "student_t"
    prior_scale = 1.0
    tempering = "posterior"               # or "likelihood"
    noise_scale = 0.1                     # regression only: fixed noise (default: learned)

    [inference]
    methods = ["sgld", "swag"]            # any of pyro_bdl.methods()
    epochs = 100                          # for every method that takes an `epochs` option
    batch_size = 100                      # minibatches for those methods (default: full batch)
    predict_samples = 100                 # weight draws in the Bayesian model average at test time
    [inference.options.sgld]              # options of one method, passed to pyro_bdl.fit
    lr = 1e-3                             # (may also override epochs and batch_size)

    [grid]
    temperature = [0.001, 0.01, 0.1, 1.0] # T > 0
    seeds = [0, 1, 2]                     # default [0]

    [output]
    dir = "runs/cold-digits"              # default "runs/<name>", relative to the working directory

    [resources]
    cpus_per_cell = 1                     # torch threads per cell, and a Ray task's CPU request
    gpus_per_cell = 0                     # a Ray task's GPU request

A factory named by import path is called as ``factory(in_features=..., out_features=...,
**network_options)`` and must return a ``torch.nn.Module`` mapping ``(B, in_features)`` inputs to
``(B, out_features)`` outputs (class logits, or one regression output).

[`load_config`][pyro_bdl.studies.load_config] / [`StudyConfig.from_dict`][pyro_bdl.studies.StudyConfig] check everything before anything runs and
raise one [`StudyConfigError`][pyro_bdl.studies.StudyConfigError] that lists every problem, one line each.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import torch

from ..examples import datasets
from ..infer import method_options, methods
from ..examples.networks import ACTIVATIONS, mlp, resolve_factory
from ..model.tempering import TEMPERING_MODES

PRIORS = ("gaussian", "fan_in", "laplace", "student_t")

#: Data sets with a natural augmentation: keyword arguments of `pyro_bdl.data.shift_images`.
#: Every image data set (``pyro_bdl.data.IMAGE_SHAPES``) gets random shifts; no flips, since the bundled
#: image sets are handwritten digits (a mirrored 2 is no 2).
AUGMENTATIONS: Dict[str, Dict[str, Any]] = {
    name: {"image_shape": tuple(shape), "flip": False} for name, shape in datasets.IMAGE_SHAPES.items()
}

_MISSING = object()

#: section -> key -> default (``_MISSING``: required)
SCHEMA: Dict[str, Dict[str, Any]] = {
    "study": {"name": None},
    "data": {"name": _MISSING, "augment": False, "train_size": None, "test_fraction": 0.25, "split_seed": 0,
             "max_shift": 1},
    "model": {"network": "mlp", "hidden": None, "activation": "tanh", "network_options": {}, "prior": "gaussian",
              "prior_scale": 1.0, "tempering": "posterior", "noise_scale": None},
    "inference": {"methods": _MISSING, "epochs": None, "batch_size": None, "predict_samples": 100, "options": {}},
    "grid": {"temperature": _MISSING, "seeds": [0]},
    "output": {"dir": None},
    "resources": {"cpus_per_cell": 1, "gpus_per_cell": 0},
}
REQUIRED_SECTIONS = ("data", "inference", "grid")
#: settings a method's options table may override besides the method's own options
PER_METHOD_SETTINGS = ("epochs", "batch_size")


class StudyConfigError(ValueError):
    """A study configuration with problems; ``problems`` lists them, one message each."""

    def __init__(self, problems: List[str], source: str = "the study config"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:\n{lines}")


@dataclass(frozen=True)
class DataConfig:
    name: str
    augment: Tuple[bool, ...] = (False,)
    train_size: Optional[int] = None
    test_fraction: float = 0.25
    split_seed: int = 0
    max_shift: int = 1


@dataclass(frozen=True)
class ModelConfig:
    network: str = "mlp"
    hidden: Tuple[int, ...] = (100,)
    activation: str = "tanh"
    network_options: Dict[str, Any] = field(default_factory=dict)
    prior: str = "gaussian"
    prior_scale: float = 1.0
    tempering: str = "posterior"
    noise_scale: Optional[float] = None


@dataclass(frozen=True)
class InferenceConfig:
    methods: Tuple[str, ...]
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    predict_samples: int = 100
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def settings(self, method: str) -> Dict[str, Any]:
        """What ``fit`` gets for ``method``: its options, plus ``epochs``/``batch_size`` when the
        method takes an ``epochs`` option (the minibatch methods), unless its table sets them."""
        own = dict(self.options.get(method, {}))
        if "epochs" in method_options(method):
            if self.epochs is not None:
                own.setdefault("epochs", self.epochs)
            if self.batch_size is not None:
                own.setdefault("batch_size", self.batch_size)
        return own


@dataclass(frozen=True)
class StudyConfig:
    """A validated study: the grid temperature × method × seed × augmentation and its settings."""

    name: str
    data: DataConfig
    model: ModelConfig
    inference: InferenceConfig
    temperatures: Tuple[float, ...]
    seeds: Tuple[int, ...] = (0,)
    output_dir: str = "runs/study"
    cpus_per_cell: int = 1
    gpus_per_cell: float = 0

    @property
    def num_cells(self) -> int:
        """Cells in the grid: |temperatures| × |methods| × |seeds| × |augmentation settings|."""
        return len(self.temperatures) * len(self.inference.methods) * len(self.seeds) * len(self.data.augment)

    @staticmethod
    def from_toml(path: str) -> "StudyConfig":
        """Read and validate a study TOML file ([`load_config`][pyro_bdl.studies.load_config])."""
        return load_config(path)

    @staticmethod
    def from_dict(raw: Mapping[str, Any], source: str = "the study config", default_name: str = "study") -> "StudyConfig":
        """Validate a nested dict shaped like the TOML file; raise [`StudyConfigError`][pyro_bdl.studies.StudyConfigError] listing every problem."""
        return _parse(raw, source, default_name)


def load_config(path: str) -> StudyConfig:
    """Read and validate a study TOML file."""
    if not os.path.isfile(path):
        raise StudyConfigError([f"no such file {path!r}"], source=path)
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise StudyConfigError([f"not valid TOML: {err}"], source=path) from None
    return _parse(raw, path, os.path.splitext(os.path.basename(path))[0])


# -- validation ---------------------------------------------------------------------------------

def _unknown(key: str, known, where: str, what: str = "key") -> str:
    known = sorted(set(known))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known {what}s: {', '.join(known)}"
    return f"{where} unknown {what} {key!r}; {hint}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse(raw: Mapping[str, Any], source: str, default_name: str) -> StudyConfig:
    problems: List[str] = []
    if not isinstance(raw, Mapping):
        raise StudyConfigError([f"expected a table of sections, got {type(raw).__name__}"], source)
    sections: Dict[str, Dict[str, Any]] = {}
    for name, body in raw.items():
        if name not in SCHEMA:
            problems.append(_unknown(name, SCHEMA, "the config:", "section"))
            continue
        if not isinstance(body, Mapping):
            problems.append(f"[{name}] must be a table of keys, got {body!r}")
            continue
        for key in body:
            if key not in SCHEMA[name]:
                problems.append(_unknown(key, SCHEMA[name], f"[{name}]"))
        sections[name] = dict(body)
    for name in REQUIRED_SECTIONS:
        if name not in raw:
            problems.append(f"missing section [{name}]")

    def get(section: str, key: str):
        value = sections.get(section, {}).get(key, _MISSING)
        if value is _MISSING:
            value = SCHEMA[section][key]
            if value is _MISSING and section in sections:
                problems.append(f"[{section}] {key} is required")
                return None
        return value

    # [study]
    name = get("study", "name")
    if name is None:
        name = default_name
    elif not isinstance(name, str) or not name.strip():
        problems.append(f"[study] name must be a non-empty string, got {name!r}")
        name = default_name

    # [data]
    data_name = get("data", "name")
    dataset = None
    if data_name is not None:
        if data_name not in datasets.DATASETS:
            problems.append(f"[data] name: unknown data set {data_name!r}; bundled data sets: "
                            f"{', '.join(sorted(datasets.DATASETS))}")
            data_name = None
    augment = get("data", "augment")
    augment = [augment] if isinstance(augment, bool) else augment
    if not isinstance(augment, list) or not augment or not all(isinstance(a, bool) for a in augment):
        problems.append(f"[data] augment must be true, false or a non-empty list of them, got {augment!r}")
        augment = [False]
    elif len(set(augment)) != len(augment):
        problems.append(f"[data] augment lists a value twice: {augment!r}")
    if data_name is not None and any(augment) and data_name not in AUGMENTATIONS:
        problems.append(f"[data] augment: data set {data_name!r} has no augmentation (it is not images); "
                        f"augmentation is defined for {', '.join(sorted(AUGMENTATIONS))}. Set augment = false.")
    train_size = get("data", "train_size")
    if train_size is not None and (not _is_int(train_size) or train_size < 1):
        problems.append(f"[data] train_size must be a positive integer, got {train_size!r}")
        train_size = None
    test_fraction = get("data", "test_fraction")
    if not _is_number(test_fraction) or not 0 < test_fraction < 1:
        problems.append(f"[data] test_fraction must be a number in (0, 1), got {test_fraction!r}")
        test_fraction = 0.25
    split_seed = get("data", "split_seed")
    if not _is_int(split_seed) or split_seed < 0:
        problems.append(f"[data] split_seed must be a non-negative integer, got {split_seed!r}")
        split_seed = 0
    max_shift = get("data", "max_shift")
    if not _is_int(max_shift) or max_shift < 1:
        problems.append(f"[data] max_shift must be a positive integer, got {max_shift!r}")
        max_shift = 1
    if data_name is not None:
        try:
            dataset = datasets.load_dataset(data_name, test_fraction=test_fraction, seed=split_seed,
                                            train_size=train_size)
        except ValueError as err:
            problems.append(f"[data] {err}")

    # [model]
    model_problems_before = len(problems)
    network = get("model", "network")
    hidden = get("model", "hidden")
    activation = get("model", "activation")
    network_options = get("model", "network_options")
    if not isinstance(network, str):
        problems.append(f"[model] network must be 'mlp' or an import path 'package.module:factory', got {network!r}")
        network = "mlp"
    elif network != "mlp":
        try:
            resolve_factory(network)
        except ValueError as err:
            problems.append(f"[model] {err}")
    if network == "mlp":
        hidden = [100] if hidden is None else hidden
        if not isinstance(hidden, list) or not all(_is_int(h) and h > 0 for h in hidden):
            problems.append(f"[model] hidden must be a list of positive integers (layer widths), got {hidden!r}")
            hidden = [100]
        if activation not in ACTIVATIONS:
            problems.append(f"[model] activation: unknown {activation!r}; choose one of {', '.join(sorted(ACTIVATIONS))}")
        if network_options:
            problems.append("[model] network_options are for a network given by import path; "
                            "the mlp takes hidden and activation")
    else:
        for key in ("hidden", "activation"):
            if key in sections.get("model", {}):
                problems.append(f"[model] {key} applies to network = 'mlp' only; pass your factory's arguments "
                                "in [model.network_options]")
        hidden = []
    if not isinstance(network_options, Mapping):
        problems.append(f"[model] network_options must be a table, got {network_options!r}")
        network_options = {}
    prior = get("model", "prior")
    if prior not in PRIORS:
        problems.append(f"[model] prior: unknown {prior!r}; choose one of {', '.join(PRIORS)}")
    prior_scale = get("model", "prior_scale")
    if not _is_number(prior_scale) or not prior_scale > 0 or not math.isfinite(prior_scale):
        problems.append(f"[model] prior_scale must be a positive number, got {prior_scale!r}")
        prior_scale = 1.0
    tempering = get("model", "tempering")
    if tempering not in TEMPERING_MODES:
        problems.append(f"[model] tempering must be one of {', '.join(TEMPERING_MODES)}, got {tempering!r}")
    noise_scale = get("model", "noise_scale")
    if noise_scale is not None:
        if not _is_number(noise_scale) or not noise_scale > 0:
            problems.append(f"[model] noise_scale must be a positive number (or left out to learn it), got {noise_scale!r}")
        elif dataset is not None and dataset.task != "regression":
            problems.append(f"[model] noise_scale is for regression; {data_name!r} is a classification data set")
    if dataset is not None and len(problems) == model_problems_before:  # build it only if all else is right
        try:
            check_network(network, tuple(hidden), activation, dict(network_options), dataset)
        except (ValueError, TypeError) as err:
            problems.append(f"[model] {err}")

    # [inference]
    known_methods = methods()
    method_list = get("inference", "methods")
    if method_list is not None:
        if isinstance(method_list, str):
            method_list = [method_list]
        if not isinstance(method_list, list) or not method_list:
            problems.append(f"[inference] methods must be a non-empty list of method names, got {method_list!r}")
            method_list = []
        for m in method_list:
            if m not in known_methods:
                problems.append(_unknown(m, known_methods, "[inference] methods:", "method")
                                .replace("known methods", "available methods"))
        if len(set(map(str, method_list))) != len(method_list):
            problems.append(f"[inference] methods lists a method twice: {method_list!r}")
    method_list = [m for m in (method_list or []) if m in known_methods]
    epochs = get("inference", "epochs")
    if epochs is not None and (not _is_int(epochs) or epochs < 1):
        problems.append(f"[inference] epochs must be a positive integer, got {epochs!r}")
        epochs = None
    if epochs is not None and method_list and not any("epochs" in method_options(m) for m in method_list):
        problems.append(f"[inference] epochs: none of the methods {method_list} takes an epochs option; "
                        "set their run length in [inference.options.<method>]")
    batch_size = get("inference", "batch_size")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
        problems.append(f"[inference] batch_size must be a positive integer, got {batch_size!r}")
        batch_size = None
    predict_samples = get("inference", "predict_samples")
    if not _is_int(predict_samples) or predict_samples < 1:
        problems.append(f"[inference] predict_samples must be a positive integer, got {predict_samples!r}")
        predict_samples = 100
    options = get("inference", "options")
    clean_options: Dict[str, Dict[str, Any]] = {}
    if not isinstance(options, Mapping):
        problems.append(f"[inference.options] must be a table of per-method tables, got {options!r}")
        options = {}
    for m, opts in options.items():
        if m not in (get("inference", "methods") or []):
            problems.append(f"[inference.options.{m}] is for a method that is not in [inference] methods")
            continue
        if m not in known_methods:
            continue
        if not isinstance(opts, Mapping):
            problems.append(f"[inference.options.{m}] must be a table of options, got {opts!r}")
            continue
        accepted = method_options(m)
        for key in opts:
            if key not in accepted and key not in PER_METHOD_SETTINGS:
                problems.append(_unknown(key, list(accepted) + list(PER_METHOD_SETTINGS), f"[inference.options.{m}]",
                                         "option"))
        clean_options[m] = dict(opts)

    # [grid]
    temps = get("grid", "temperature")
    temperatures: List[float] = []
    if temps is not None:
        if _is_number(temps):
            temps = [temps]
        if not isinstance(temps, list) or not temps:
            problems.append(f"[grid] temperature must be a non-empty list of temperatures T > 0, got {temps!r}")
        else:
            for t in temps:
                if not _is_number(t) or not math.isfinite(t) or t <= 0:
                    problems.append(f"[grid] temperature {t!r} is not a number > 0 (T = 1 is Bayes, T < 1 cold; "
                                    "for T → 0 use method 'map')")
                else:
                    temperatures.append(float(t))
            if len(set(temperatures)) != len(temperatures):
                problems.append(f"[grid] temperature lists a value twice: {temps!r}")
    seeds = get("grid", "seeds")
    if _is_int(seeds):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        problems.append(f"[grid] seeds must be a non-empty list of non-negative integers, got {seeds!r}")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        problems.append(f"[grid] seeds lists a seed twice: {seeds!r}")

    # [output], [resources]
    out_dir = get("output", "dir")
    if out_dir is None:
        out_dir = os.path.join("runs", name)
    elif not isinstance(out_dir, str) or not out_dir:
        problems.append(f"[output] dir must be a path, got {out_dir!r}")
    cpus = get("resources", "cpus_per_cell")
    if not _is_int(cpus) or cpus < 1:
        problems.append(f"[resources] cpus_per_cell must be a positive integer, got {cpus!r}")
        cpus = 1
    gpus = get("resources", "gpus_per_cell")
    if not _is_number(gpus) or gpus < 0:
        problems.append(f"[resources] gpus_per_cell must be a number >= 0, got {gpus!r}")
        gpus = 0

    if problems:
        raise StudyConfigError(problems, source)
    return StudyConfig(
        name=name,
        data=DataConfig(data_name, tuple(augment), train_size, float(test_fraction), split_seed, max_shift),
        model=ModelConfig(network, tuple(hidden), activation, dict(network_options), prior, float(prior_scale),
                          tempering, None if noise_scale is None else float(noise_scale)),
        inference=InferenceConfig(tuple(method_list), epochs, batch_size, predict_samples, clean_options),
        temperatures=tuple(temperatures),
        seeds=tuple(seeds),
        output_dir=out_dir,
        cpus_per_cell=cpus,
        gpus_per_cell=gpus,
    )


def build_network(network: str, hidden: Tuple[int, ...], activation: str, network_options: Dict[str, Any],
                  in_features: int, out_features: int) -> torch.nn.Module:
    """The network of a study cell: the named mlp or the factory at the import path."""
    if network == "mlp":
        return mlp(in_features, list(hidden), out_features, activation)
    net = resolve_factory(network)(in_features=in_features, out_features=out_features, **network_options)
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"network factory {network!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def check_network(network: str, hidden: Tuple[int, ...], activation: str, network_options: Dict[str, Any],
                  dataset: "datasets.Dataset") -> None:
    """Build the network once and run two training inputs through it: it must give (2, output_dim)."""
    with torch.random.fork_rng(devices=[]):
        try:
            net = build_network(network, hidden, activation, network_options, dataset.num_features, dataset.output_dim)
        except TypeError as err:
            raise TypeError(f"network {network!r} could not be built: {err}") from None
        with torch.no_grad():
            try:
                out = net(dataset.x_train[:2])
            except Exception as err:  # noqa: BLE001 — any failure here is a config problem
                raise ValueError(f"network {network!r} fails on inputs of shape {tuple(dataset.x_train[:2].shape)}: {err}") from None
    if not torch.is_tensor(out) or tuple(out.shape) != (2, dataset.output_dim):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"network {network!r} maps inputs (2, {dataset.num_features}) to {shape}; "
                         f"{dataset.name} needs outputs (2, {dataset.output_dim})")
