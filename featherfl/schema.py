"""The whole run schema, assembled above the layers that declare it, and the config builder.

``featherfl.config`` declares the core keys and knows nothing above itself; each layer
declares its own section (a method its ``CONFIG``, FAug ``[faug]``, secure aggregation
``[secagg]``, tracking ``[log]``). This module puts them together and registers the
plug-ins a config names by dotted path, so the bottom layer never imports the top.
"""

from __future__ import annotations

import importlib.util
import tomllib
from typing import Any, Iterable

import featherfl.plugins as plugins
from featherfl.algorithms.faug import FAUG_CONFIG
from featherfl.algorithms.registry import get as get_algorithm
from featherfl.algorithms.registry import names as algorithm_names
from featherfl.config import CORE_SCHEMA, Config, ConfigError, Field, _coerce, _flatten, brief, check_core, renamed, unknown_key_message
from featherfl.data.sources import source_names
from featherfl.models import model_names
from featherfl.secagg import SECAGG_CONFIG
from featherfl.tracking import LOG_CONFIG


def method_sections() -> dict[str, Field]:
    """Every registered method's keys, and the [faug] and [secagg] keys of the wrappers that work around any method."""
    out: dict[str, Field] = {**FAUG_CONFIG, **SECAGG_CONFIG}
    for n in algorithm_names():
        out.update(get_algorithm(n).CONFIG)
    return out


def full_schema() -> dict[str, Field]:
    schema = dict(CORE_SCHEMA)
    schema.update(LOG_CONFIG)
    schema.update(method_sections())
    return schema


def build_config(
    toml_text: str | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Resolve defaults <- base <- TOML file <- overrides, validating every key.

    Raises ConfigError with a one-line message naming the key and the allowed values.
    """
    layers: list[tuple[str, Any]] = []
    if base:
        layers.extend(base.items())
    if toml_text is not None:
        try:
            data = tomllib.loads(toml_text)
        except (tomllib.TOMLDecodeError, ValueError) as e:  # ValueError: e.g. an integer of over 4300 digits
            raise ConfigError(f"config file is not valid TOML: {str(e).splitlines()[0][:200]}") from None
        layers.extend(_flatten(data).items())
    layers.extend(overrides)
    algorithm = next((v for k, v in reversed(layers) if k == "algorithm"), None)
    layers = renamed(layers, algorithm)
    if isinstance(algorithm, str) and plugins.is_dotted(algorithm):
        plugins.register_algorithm_path(algorithm)  # its own config section joins the schema
    schema = full_schema()
    values = {k: f.default for k, f in schema.items()}
    for key, value in layers:
        if key not in schema:
            raise ConfigError(unknown_key_message(key, schema))
        values[key] = _coerce(key, schema[key], value)
    if values["algorithm"] not in algorithm_names():
        raise ConfigError(
            f"config key 'algorithm': got {values['algorithm']!r}, expected one of {brief(algorithm_names())}"
        )
    if values["dataset"].startswith("hf:") and importlib.util.find_spec("hf") is None:
        raise ConfigError(f"config key 'dataset': got {values['dataset']!r}; for a Hugging Face datasets folder write dataset = \"hf\" and data.dir = \"{values['dataset'][3:]}\"")
    if plugins.is_dotted(values["dataset"]):
        plugins.register_dataset_path(values["dataset"])
    if plugins.is_dotted(values["model.name"]):
        plugins.register_model_path(values["model.name"])
    if values["dataset"] not in source_names():
        raise ConfigError(f"config key 'dataset': got {values['dataset']!r}, expected one of {brief(source_names())}")
    if values["model.name"] not in model_names():
        raise ConfigError(
            f"config key 'model.name': got {values['model.name']!r}, expected one of {brief(model_names())}"
        )
    check_core(values)
    return Config(values, schema)


def reference_markdown() -> str:
    """The config reference (docs/config.md), generated from the schema."""
    schema = full_schema()
    lines = ["# Config reference", "", "Generated from `featherfl.config` by `featherfl config-doc`; a test keeps it in sync.", ""]
    sections: dict[str, list[str]] = {}
    for k in schema:
        sections.setdefault(k.split(".")[0] if "." in k else "", []).append(k)
    for sec in sorted(sections):
        lines += [f"## [{sec}]" if sec else "## top level", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for k in sections[sec]:
            f = schema[k]
            default = repr(f.default) if not isinstance(f.default, str) else f'"{f.default}"'
            lines.append(f"| `{k}` | {f.type} | `{default}` | {f.allowed()} | {f.help} |")
        lines.append("")
    return "\n".join(lines)
