"""Study configs shipped with pyro_bdl (``pyro_bdl/examples/configs/<name>.toml``), for ``pyro-bdl study --example NAME``."""
from __future__ import annotations

import os
from typing import List

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def example_configs() -> List[str]:
    """Names of the bundled study configs."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".toml")) if os.path.isdir(CONFIG_DIR) else []


def example_config(name: str) -> str:
    """The path of the bundled study config ``name`` (see [`example_configs`][pyro_bdl.studies.example_configs])."""
    available = example_configs()
    if name not in available:
        raise ValueError(f"no example study {name!r}; examples: {', '.join(available)}")
    return os.path.join(CONFIG_DIR, f"{name}.toml")
