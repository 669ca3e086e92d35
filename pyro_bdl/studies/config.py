"""A study's configuration: a TOML file (or the same nested dict), validated up front.

Every section and key, with its default (the schema itself is `SCHEMA`, built from
`pyro_bdl.studies.schema`)::

    [study]
    name = "cold-digits"                  # default: the file's stem

    [data]
    name = "digits"                       # a bundled data set (pyro_bdl.data.DATASETS)
    augment = [false, true]               # a study dimension: bool or list of bools (default false)
    train_size = 1000                     # subsample the training split (default: all of it)
    test_fraction = 0.25
    split_seed = 0                        # the train/test split is fixed across cells
    max_shift = 1                         # augmentation: random shifts of ±max_shift pixels
    pca = 10                              # project the inputs on their first 10 principal components
                                          # (fitted on the training split; default: no projection)

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

    [reference]                           # optional: an HMC reference (Izmailov et al. 2021)
    method = "nuts"                       # default; any method of pyro_bdl.methods()
    backend = "numpyro"                   # ... and that method's options (for nuts/hmc the defaults
    num_chains = 4                        #     are backend = "numpyro", num_chains = 4)
    num_samples = 500
    warmup = 500
    seed = 0                              # the reference's seed (one reference per T and augmentation)
    predict_samples = 1000                # draws in its model average (default: every draw it kept)
    rhat_threshold = 1.01                 # max function-space R-hat above which it is "not converged"
    diagnostic_inputs = 100               # R-hat / ESS on the class probabilities at the first 100
                                          # test inputs (default 100; all of them: a large number)

    [evaluation]                          # optional: accuracy and NLL under covariate shift
    corruptions = ["gaussian_noise", "shift"]   # any of pyro_bdl.data.CORRUPTIONS
    severities = [1, 3, 5]                # integers 1..5 (default all five)
    seed = 0                              # the corruptions' random seed

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

**A study config is trusted code.** Validation never imports or calls anything a config names:
a ``network = "package.module:factory"`` string is only checked for its shape. But running the
study imports that module and calls the factory, which can do anything your user account can;
run only configs (and network factories) you would run as a Python script.

[`load_config`][pyro_bdl.studies.load_config] / [`StudyConfig.from_dict`][pyro_bdl.studies.StudyConfig] check everything before anything runs and
raise one [`StudyConfigError`][pyro_bdl.studies.StudyConfigError] that lists every problem, one line each;
[`check_network`][pyro_bdl.studies.check_network] (called by the study before its first cell) imports and tries the network.
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import torch

from ..examples import datasets
from ..infer import method_options, methods
from ..infer.options import deprecated_names
from ..infer.registry import METHODS
from ..examples.networks import ACTIVATIONS, mlp, resolve_factory
from ..model.tempering import TEMPERING_MODES
from .schema import (REQUIRED, Check, Invalid, Key, Section, boolean, choice, import_path, integer, list_of, number,
                     read_sections, string, table, unknown)

PRIORS = ("gaussian", "fan_in", "laplace", "student_t")

#: Data sets with a natural augmentation: keyword arguments of `pyro_bdl.data.shift_images`.
#: Every image data set (``pyro_bdl.data.IMAGE_SHAPES``) gets random shifts; no flips, since the bundled
#: image sets are handwritten digits (a mirrored 2 is no 2).
AUGMENTATIONS: Dict[str, Dict[str, Any]] = {
    name: {"image_shape": tuple(shape), "flip": False} for name, shape in datasets.IMAGE_SHAPES.items()
}

#: settings a method's options table may override besides the method's own options
PER_METHOD_SETTINGS = ("epochs", "batch_size")
#: the default reference: NUTS on the NumPyro backend with four chains (Izmailov et al. 2021 use HMC)
REFERENCE_DEFAULTS: Dict[str, Dict[str, Any]] = {"nuts": {"backend": "numpyro", "num_chains": 4},
                                                 "hmc": {"backend": "numpyro", "num_chains": 4}}


def _temperature(v: Any) -> float:
    try:
        return number(0, low_open=True)(v)
    except Invalid:
        raise Invalid("a number > 0 (T = 1 is Bayes, T < 1 cold; for T → 0 use method 'map')") from None


def _severity(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
        raise Invalid("an integer from 1 to 5")
    return v


#: The whole schema: every section, key, check and default. ``None`` defaults mean "not set".
SCHEMA: Tuple[Section, ...] = (
    Section("study", (Key("name", string(), None, "default: the file's stem"),)),
    Section("data", (
        Key("name", choice(lambda: datasets.DATASETS, "a bundled data set"), REQUIRED),
        Key("augment", list_of(boolean, "true/false"), (False,), "a study dimension"),
        Key("train_size", integer(1), None, "subsample the training split"),
        Key("test_fraction", number(0, 1, low_open=True, high_open=True), 0.25),
        Key("split_seed", integer(0), 0),
        Key("max_shift", integer(1), 1, "augmentation: shifts of ±max_shift pixels"),
        Key("pca", integer(1), None, "project inputs on their first pca principal components"),
    ), required=True),
    Section("model", (
        Key("network", import_path, "mlp", "'mlp' or 'package.module:factory'"),
        Key("hidden", list_of(integer(1), "layer widths (positive integers)", scalar_ok=False, unique=False), None,
            "mlp only (default [100])"),
        Key("activation", choice(lambda: ACTIVATIONS), "tanh", "mlp only"),
        Key("network_options", table, {}, "keyword arguments of the factory"),
        Key("prior", choice(PRIORS), "gaussian"),
        Key("prior_scale", number(0, low_open=True, what="a positive number"), 1.0),
        Key("tempering", choice(TEMPERING_MODES), "posterior"),
        Key("noise_scale", number(0, low_open=True, what="a positive number (or left out to learn it)"), None,
            "regression only"),
    )),
    Section("inference", (
        Key("methods", list_of(string("a method name"), "method names"), REQUIRED),
        Key("epochs", integer(1), None),
        Key("batch_size", integer(1), None),
        Key("predict_samples", integer(1), 100),
        Key("options", table, {}, "[inference.options.<method>] tables"),
    ), required=True),
    Section("reference", (
        Key("method", choice(lambda: methods()), "nuts"),
        Key("seed", integer(0), 0),
        Key("predict_samples", integer(1), None, "default: every draw it kept"),
        Key("rhat_threshold", number(1.0, what="a number >= 1"), 1.01),
        Key("diagnostic_inputs", integer(2), 100, "test inputs of its function-space R-hat / ESS"),
    ), open=True, doc="the reference posterior and its method's options"),
    Section("evaluation", (
        Key("corruptions", list_of(choice(datasets.CORRUPTIONS), "corruption kinds"), REQUIRED),
        Key("severities", list_of(_severity, "severities (integers 1..5)"), (1, 2, 3, 4, 5)),
        Key("seed", integer(0), 0),
    ), doc="metrics under covariate shift"),
    Section("grid", (
        Key("temperature", list_of(_temperature, "temperatures T > 0"), REQUIRED),
        Key("seeds", list_of(integer(0), "non-negative integers"), (0,)),
    ), required=True),
    Section("output", (Key("dir", string("a path"), None, "default runs/<name>"),)),
    Section("resources", (
        Key("cpus_per_cell", integer(1), 1),
        Key("gpus_per_cell", number(0, what="a number >= 0"), 0),
    )),
)


class StudyConfigError(ValueError):
    """A study configuration with problems; ``problems`` lists them, one message each."""

    def __init__(self, problems: List[str], source: str = "the study config"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:\n{lines}")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the data set, its split and preprocessing, and the augmentation settings."""

    name: str
    augment: Tuple[bool, ...] = (False,)
    train_size: Optional[int] = None
    test_fraction: float = 0.25
    split_seed: int = 0
    max_shift: int = 1
    pca: Optional[int] = None


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: network, prior, tempering mode and (regression) noise."""

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
    """``[inference]``: the methods of the grid and their settings."""

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
class ReferenceConfig:
    """``[reference]``: the posterior every method is compared with (Izmailov et al. 2021: HMC).

    ``options`` go to ``pyro_bdl.fit`` (for nuts/hmc: ``backend="numpyro"``, ``num_chains=4``
    unless set); ``predict_samples`` None means every kept draw; the reference counts as
    converged when its largest function-space R-hat on the first ``diagnostic_inputs`` test inputs
    is <= ``rhat_threshold``.
    """

    method: str = "nuts"
    options: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    predict_samples: Optional[int] = None
    rhat_threshold: float = 1.01
    diagnostic_inputs: int = 100

    @property
    def uses_augmentation(self) -> bool:
        """Whether the method sees augmented minibatches (methods with an ``epochs`` option);
        full-batch samplers (nuts, hmc) do not, so one reference per T serves both settings."""
        return "epochs" in method_options(self.method)


@dataclass(frozen=True)
class EvaluationConfig:
    """``[evaluation]``: corrupted copies of the test set (`pyro_bdl.data.corrupt`)."""

    corruptions: Tuple[str, ...]
    severities: Tuple[int, ...] = (1, 2, 3, 4, 5)
    seed: int = 0


@dataclass(frozen=True)
class StudyConfig:
    """A validated study: the grid temperature × method × seed × augmentation and its settings,
    plus an optional reference posterior and covariate-shift evaluation."""

    name: str
    data: DataConfig
    model: ModelConfig
    inference: InferenceConfig
    temperatures: Tuple[float, ...]
    seeds: Tuple[int, ...] = (0,)
    output_dir: str = "runs/study"
    cpus_per_cell: int = 1
    gpus_per_cell: float = 0
    reference: Optional[ReferenceConfig] = None
    evaluation: Optional[EvaluationConfig] = None

    @property
    def num_cells(self) -> int:
        """Cells in the grid: |temperatures| × |methods| × |seeds| × |augmentation settings|,
        plus the reference cells (one per T, and per augmentation setting if the reference uses it)."""
        n = len(self.temperatures) * len(self.inference.methods) * len(self.seeds) * len(self.data.augment)
        if self.reference is not None:
            n += len(self.temperatures) * (len(self.data.augment) if self.reference.uses_augmentation else 1)
        return n

    @staticmethod
    def from_toml(path: str) -> "StudyConfig":
        """Deprecated alias of [`load_config`][pyro_bdl.studies.load_config]."""
        warnings.warn("StudyConfig.from_toml is deprecated; use pyro_bdl.studies.load_config(path)",
                      DeprecationWarning, stacklevel=2)
        return load_config(path)

    @staticmethod
    def from_dict(raw: Mapping[str, Any], source: str = "the study config", default_name: str = "study") -> "StudyConfig":
        """Validate a nested dict shaped like the TOML file; raise [`StudyConfigError`][pyro_bdl.studies.StudyConfigError] listing every problem."""
        return parse(raw, source, default_name)


def load_config(path: str) -> StudyConfig:
    """Read and validate a study TOML file."""
    if not os.path.isfile(path):
        raise StudyConfigError([f"no such file {path!r}"], source=path)
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise StudyConfigError([f"not valid TOML: {err}"], source=path) from None
    return parse(raw, path, os.path.splitext(os.path.basename(path))[0])


# -- validation: the schema first, then the checks across keys --------------------------------------
def parse(raw: Mapping[str, Any], source: str = "the study config", default_name: str = "study") -> StudyConfig:
    """Check ``raw`` against `SCHEMA` and across keys; the [`StudyConfig`][pyro_bdl.studies.StudyConfig], or one
    [`StudyConfigError`][pyro_bdl.studies.StudyConfigError] listing every problem. Imports and runs nothing the config names."""
    problems: List[str] = []
    read = read_sections(raw, SCHEMA, problems)
    v = read.values
    dataset = _check_data(v["data"], problems)
    model = _check_model(v["model"], read, dataset, problems)
    inference = _check_inference(v["inference"], problems)
    reference = _check_reference(v["reference"], read, dataset, problems)
    evaluation = _check_evaluation(v["evaluation"], read, v["data"], problems)
    temperatures = v["grid"]["temperature"] or ()
    name = v["study"]["name"] or default_name
    if problems:
        raise StudyConfigError(problems, source)
    d = v["data"]
    return StudyConfig(
        name=name,
        data=DataConfig(d["name"], tuple(d["augment"]), d["train_size"], d["test_fraction"], d["split_seed"],
                        d["max_shift"], d["pca"]),
        model=model, inference=inference, temperatures=tuple(temperatures), seeds=tuple(v["grid"]["seeds"]),
        output_dir=v["output"]["dir"] or os.path.join("runs", name),
        cpus_per_cell=v["resources"]["cpus_per_cell"], gpus_per_cell=v["resources"]["gpus_per_cell"],
        reference=reference, evaluation=evaluation)


def _check_data(d: Dict[str, Any], problems: List[str]) -> Optional["datasets.Dataset"]:
    if d["name"] is None:
        return None
    if any(d["augment"]) and d["name"] not in AUGMENTATIONS:
        problems.append(f"[data] augment: data set {d['name']!r} has no augmentation (it is not images); "
                        f"augmentation is defined for {', '.join(sorted(AUGMENTATIONS))}. Set augment = false.")
    if any(d["augment"]) and d["pca"] is not None:
        problems.append("[data] augment shifts pixels, which the pca projection no longer has; "
                        "set augment = false or leave out pca")
    try:
        dataset = datasets.load_dataset(d["name"], test_fraction=d["test_fraction"], seed=d["split_seed"],
                                        train_size=d["train_size"])
    except ValueError as err:
        problems.append(f"[data] {err}")
        return None
    if d["pca"] is not None and d["pca"] > min(dataset.num_features, len(dataset.x_train)):
        problems.append(f"[data] pca = {d['pca']} exceeds the {dataset.num_features} features "
                        f"(and {len(dataset.x_train)} training points) of {d['name']}")
    return dataset


def _check_model(m: Dict[str, Any], read, dataset, problems: List[str]) -> ModelConfig:
    given = read.given["model"]
    hidden = m["hidden"]
    if m["network"] == "mlp":
        hidden = (100,) if hidden is None else tuple(hidden)
        if m["network_options"]:
            problems.append("[model] network_options are for a network given by import path; "
                            "the mlp takes hidden and activation")
    else:
        for key in ("hidden", "activation"):
            if key in given:
                problems.append(f"[model] {key} applies to network = 'mlp' only; pass your factory's arguments "
                                "in [model.network_options]")
        hidden = ()
    if m["noise_scale"] is not None and dataset is not None and dataset.task != "regression":
        problems.append(f"[model] noise_scale is for regression; {dataset.name!r} is a classification data set")
    return ModelConfig(m["network"], hidden, m["activation"], dict(m["network_options"]), m["prior"],
                       m["prior_scale"], m["tempering"], m["noise_scale"])


def _check_options(method: str, options: Any, where: str, problems: List[str],
                   extra: Tuple[str, ...] = PER_METHOD_SETTINGS) -> Dict[str, Any]:
    """The options of ``method`` from a table, each name checked against the method's signature."""
    if not isinstance(options, Mapping):
        problems.append(f"{where} must be a table of options, got {options!r}")
        return {}
    accepted = list(method_options(method)) + deprecated_names(method) + list(extra)  # old names: fit warns
    defaults = {name: p.default for name, p in inspect.signature(METHODS[method]).parameters.items()}
    defaults.update({k: 1 for k in PER_METHOD_SETTINGS})  # epochs, batch_size: integers
    for key, value in options.items():
        if key not in accepted:
            problems.append(unknown(key, accepted, where, "option"))
            continue
        check = _check_like(defaults.get(key))
        if check is not None:
            try:
                check(value)
            except Invalid as err:
                problems.append(f"{where} {key} must be {err} ({method}'s default is {defaults[key]!r}), "
                                f"got {value!r}")
    return {k: v for k, v in options.items() if k in accepted}


def _check_like(default: Any) -> Optional[Check]:
    """The check matching an option's default value (bool, int or float), or None (anything goes:
    strings and None defaults often take other types too, e.g. ``init`` a dict)."""
    if isinstance(default, bool):
        return boolean
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return number()
    return None


def _check_inference(inf: Dict[str, Any], problems: List[str]) -> InferenceConfig:
    known = methods()
    listed = list(inf["methods"] or ())
    for m in listed:
        if m not in known:
            problems.append(unknown(m, known, "[inference] methods:", "method").replace("known methods",
                                                                                         "available methods"))
    method_list = [m for m in listed if m in known]
    if inf["epochs"] is not None and method_list and not any("epochs" in method_options(m) for m in method_list):
        problems.append(f"[inference] epochs: none of the methods {method_list} takes an epochs option; "
                        "set their run length in [inference.options.<method>]")
    options: Dict[str, Dict[str, Any]] = {}
    for m, opts in inf["options"].items():
        if m not in listed:
            problems.append(f"[inference.options.{m}] is for a method that is not in [inference] methods")
        elif m in known:
            options[m] = _check_options(m, opts, f"[inference.options.{m}]", problems)
    return InferenceConfig(tuple(method_list), inf["epochs"], inf["batch_size"], inf["predict_samples"], options)


def _check_reference(ref: Dict[str, Any], read, dataset, problems: List[str]) -> Optional[ReferenceConfig]:
    if "reference" not in read.present:
        return None
    method = ref["method"]
    if "method" in read.failed["reference"]:  # reported by the schema; its options cannot be checked
        return None
    extra = ("batch_size",) if "epochs" in method_options(method) else ()
    options = dict(REFERENCE_DEFAULTS.get(method, {}))
    options.update(_check_options(method, read.extra["reference"], "[reference]", problems, extra))
    if dataset is not None and dataset.task != "classification":
        problems.append(f"[reference] compares top-class agreement and total variation of class probabilities; "
                        f"{dataset.name!r} is a regression data set. Leave out [reference] or use a classification set")
    return ReferenceConfig(method, options, ref["seed"], ref["predict_samples"], ref["rhat_threshold"],
                           ref["diagnostic_inputs"])


def _check_evaluation(ev: Dict[str, Any], read, data: Dict[str, Any], problems: List[str]) -> Optional[EvaluationConfig]:
    if "evaluation" not in read.present or ev["corruptions"] is None:
        return None
    if "translate" in ev["corruptions"] and data["name"] is not None and data["name"] not in datasets.IMAGE_SHAPES:
        problems.append(f"[evaluation] corruptions: 'translate' moves images; {data['name']!r} is not an image "
                        f"data set ({', '.join(sorted(datasets.IMAGE_SHAPES))} are). Use gaussian_noise or shift")
    return EvaluationConfig(tuple(ev["corruptions"]), tuple(sorted(ev["severities"])), ev["seed"])


def build_network(network: str, hidden: Tuple[int, ...], activation: str, network_options: Dict[str, Any],
                  in_features: int, out_features: int) -> torch.nn.Module:
    """The network of a study cell: the named mlp, or the factory at the import path (imported
    and called here: a study config is trusted code)."""
    if network == "mlp":
        return mlp(in_features, list(hidden), out_features, activation)
    net = resolve_factory(network)(in_features=in_features, out_features=out_features, **network_options)
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"network factory {network!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def check_network(config: StudyConfig, source: str = "the study config") -> None:
    """Import and build the config's network once and run two training inputs through it: it must
    give ``(2, output_dim)``. A study calls this when it starts running, before its first cell
    (validation does not: it imports nothing); raises [`StudyConfigError`][pyro_bdl.studies.StudyConfigError]."""
    d, m = config.data, config.model
    dataset = datasets.load_dataset(d.name, test_fraction=d.test_fraction, seed=d.split_seed,
                                    train_size=d.train_size)
    if d.pca is not None:
        dataset, _ = datasets.pca_features(dataset, d.pca)
    num_features, x = dataset.num_features, dataset.x_train[:2]
    network = m.network
    with torch.random.fork_rng(devices=[]):
        try:
            net = build_network(network, m.hidden, m.activation, dict(m.network_options), num_features,
                                dataset.output_dim)
        except ValueError as err:
            raise StudyConfigError([f"[model] {err}"], source) from None
        except TypeError as err:
            raise StudyConfigError([f"[model] network {network!r} could not be built: {err}"], source) from None
        with torch.no_grad():
            try:
                out = net(x)
            except Exception as err:  # noqa: BLE001 — any failure here is a config problem
                raise StudyConfigError([f"[model] network {network!r} fails on inputs of shape {tuple(x.shape)}: "
                                        f"{err}"], source) from None
    if not torch.is_tensor(out) or tuple(out.shape) != (2, dataset.output_dim):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise StudyConfigError([f"[model] network {network!r} maps inputs (2, {num_features}) to {shape}; "
                                f"{dataset.name} needs outputs (2, {dataset.output_dim})"], source)
