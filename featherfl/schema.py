"""The whole run schema, assembled above the layers that declare it, and the config builder.

``featherfl.config`` declares the core keys and knows nothing above itself; each layer
declares its own section (a method its ``CONFIG``, FAug ``[faug]``, secure aggregation
``[secagg]``, tracking ``[log]``). This module puts them together and registers the
plug-ins a config names by dotted path, so the bottom layer never imports the top. The
built-in methods' sections and FAug's are read from their declarations
(``featherfl.algorithms.sections``), so building a config imports no method.
"""

from __future__ import annotations

import importlib.util
import tomllib
from typing import Any, Iterable

import featherfl.plugins as plugins
from featherfl.algorithms.registry import config as algorithm_config
from featherfl.algorithms.registry import names as algorithm_names
from featherfl.algorithms.sections import FAUG as FAUG_CONFIG
from featherfl.config import CORE_SCHEMA, Config, ConfigError, Field, _coerce, _flatten, brief, check_core, quick_caps, renamed, unknown_key_message
from featherfl.data.sources import source_names
from featherfl.models import model_names
from featherfl.compress import COMPRESS_CONFIG
from featherfl.secagg import SECAGG_CONFIG
from featherfl.tracking import LOG_CONFIG


def method_sections() -> dict[str, Field]:
    """Every registered method's keys, and the [faug], [secagg] and [compress] keys of the wrappers that work around any method."""
    out: dict[str, Field] = {**FAUG_CONFIG, **SECAGG_CONFIG, **COMPRESS_CONFIG}
    for n in algorithm_names():
        out.update(algorithm_config(n))
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
    from_file = [k for k, _ in layers[len(base or {}):]]
    layers.extend(overrides)
    explicit = [k for k, _ in layers[len(base or {}):]]  # what the user set (not the base's full dump)
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
    set_here = explicit[len(from_file):]
    ignored = [k for k in dict.fromkeys(from_file) if k not in set_here and _foreign_section(k, values, schema)]
    for key in set_here:
        section = _foreign_section(key, values, schema)
        if section:
            raise ConfigError(f"config key '{key}' is for {section}, but the running method is {values['algorithm']}; drop it or set algorithm = \"{section}\"")
    quick_caps(values)
    check_core(values)
    cfg = Config(values, schema)
    cfg.explicit = frozenset(explicit)  # a feature may adapt only what the user left at its default
    cfg.ignored = tuple(ignored)
    return cfg


def _foreign_section(key: str, values: dict[str, Any], schema: dict[str, Field]) -> str:
    """The method whose section ``key`` belongs to, when that method is not the one running and the
    value differs from its default; else ``""``.

    Set with ``--set`` or from Python, such a key is an error naming the running method:
    ``--set baffle.k=10`` without ``--algorithm baffle`` would otherwise run FedAvg unchanged. In a
    config file it is a warning, since one file often serves several methods' runs. (A saved
    ``config.toml`` lists every key at its default, so only values that differ count.) BAFFLE with
    ``baffle.peft`` reads FedPEFT's ``[fedpeft]`` keys, so those belong to it too."""
    running = values["algorithm"]
    own = {running, *(["fedpeft"] if running == "baffle" and values.get("baffle.peft") else [])}
    section = key.split(".")[0] if "." in key else ""
    if key in schema and section in set(algorithm_names()) and section not in own and values[key] != schema[key].default:
        return section
    return ""


def reference_markdown(algorithm: str | None = None) -> str:
    """The config reference (docs/config.md), generated from the schema; with ``algorithm``
    (a registered name or a ``module:Class`` plug-in) only that method's own section."""
    if algorithm is not None:
        return _method_reference(algorithm)
    schema = full_schema()
    lines = [
        "# Config reference",
        "",
        "Generated from `featherfl.config` by `featherfl config-doc`; a test keeps it in sync.",
        "`featherfl config-doc --algorithm NAME` prints one method's keys (a `module:Class` plug-in's too).",
        "",
        "A key in another method's section set to a value other than its default (`--set baffle.k=10`",
        "while FedAvg runs) is an **error** (exit 2) naming the running method when it is set with `--set`",
        "or from Python, and a one-line warning (the key is ignored) when it comes from a config file,",
        "since one file often serves several methods' runs. BAFFLE with `baffle.peft = true` also reads",
        "the `[fedpeft]` keys.",
        "`FEATHERFL_QUICK=N` in the environment caps `rounds` at N and `faug.gan_steps` at 100 N (docs/runs.md).",
        "",
    ]
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


def _method_reference(algorithm: str) -> str:
    """One method's keys: what ``config-doc --algorithm NAME`` prints (a plug-in's too, which the
    full reference cannot list because it is not registered until named)."""
    if plugins.is_dotted(algorithm):
        plugins.register_algorithm_path(algorithm)
    elif algorithm not in algorithm_names():
        raise ConfigError(f"--algorithm: got {algorithm!r}, expected one of {brief(algorithm_names())} or a module:Class plug-in")
    keys = algorithm_config(algorithm)
    lines = [f"## [{algorithm}]" if not plugins.is_dotted(algorithm) else f"## {algorithm}", ""]
    if not keys:
        return "\n".join(lines + ["(no keys of its own)", ""])
    lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for k, f in keys.items():
        default = repr(f.default) if not isinstance(f.default, str) else f'"{f.default}"'
        lines.append(f"| `{k}` | {f.type} | `{default}` | {f.allowed()} | {f.help} |")
    return "\n".join(lines + [""])
