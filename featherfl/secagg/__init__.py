"""Secure aggregation (SecAgg+) around any method that needs only a sum: ``secagg.protocol``.

``protocol.py`` is the protocol, ``wrapper.py`` the ``SecAgg(inner)`` algorithm wrapper the
engines run (``featherfl.assembly`` installs it), ``crypto.py`` the library primitives. What a
method sums, and how it finishes from the sum, the method itself declares
(``Algorithm.summation``, ``featherfl.algorithms.summation``): nothing here names a method.
Threat model: docs/security.md.
"""

from __future__ import annotations

from featherfl.config import Config, ConfigError, Field, cohort_size

SECAGG_CONFIG = {
    "secagg.protocol": Field("str", "off", "Secure aggregation: off, or secagg+ (the server learns only the sum of the round's uploads; docs/security.md).", choices=("off", "secagg+")),
    "secagg.neighbours": Field("int", 0, "secagg+: neighbours k each client shares its secrets with (0 = max(16, 4 ceil(log2 n)): everyone in rounds of up to 21 clients).", min=0),
    "secagg.threshold": Field("float", 0.5, "secagg+: shares needed to rebuild a secret, t = floor(threshold x k) + 1 (> k/2); a client's mask is removable while fewer than k - t + 1 of its neighbours drop.", min=0.5, max=1.0),
    "secagg.ring_bits": Field("int", 0, "secagg+: masked values are words of Z_2^b: 0 = the smallest of 8, 16, 32, 64 bits that holds the sum of the method's declared range at its declared precision for the round's n clients (64 where the method declares none); or 8, 16, 32, 64 to choose (refused when it cannot hold the declared range).", choices=(0, 8, 16, 32, 64)),
    "secagg.fraction_bits": Field("int", 0, "secagg+: fixed-point fraction bits f (0 = the method's declared precision, or half the ring where it declares none): each value is rounded to a multiple of 2^-f (error of the sum <= n 2^-(f+1)) and clipped to 2^(b-1-f) / n for n participants (counted in secagg_clipped_values).", min=0, max=56),
    "secagg.dropout": Field("float", 0.0, "Experiments: share of clients that vanish after uploading their masked input, before the unmasking step.", min=0.0, max=0.99),
}


def enabled(cfg: Config) -> bool:
    return cfg["secagg.protocol"] != "off"


def participants(cfg: Config) -> int:
    """Clients per round (the sampler draws exactly this many: ``config.cohort_size``)."""
    return cohort_size(cfg)


def words(cfg: Config, summation, name: str) -> tuple[int, int]:
    """(ring bits, fraction bits) of this run's masked words.

    The method declares the range and precision of what it sums (``Summation.value_range``); the
    smallest ring that holds the sum of the round's participants at that precision is chosen
    (``crypto.words_for``), unless ``secagg.ring_bits`` / ``secagg.fraction_bits`` say otherwise,
    which is refused in one line when the declared range does not fit. A method that declares no
    range gets 64-bit words with 32 fraction bits, as before declarations existed."""
    from featherfl.secagg import crypto

    bits, f = cfg["secagg.ring_bits"], cfg["secagg.fraction_bits"]
    declared = summation.value_range(cfg, name) if summation is not None else None
    n = participants(cfg)
    if declared is None:
        bits = bits or 64
        if bits < 64:
            raise ConfigError(f"config key 'secagg.ring_bits': {name} declares no bound on what it sums with these settings ({summation.undeclared_reason(cfg, name)}), so {bits}-bit words could wrap; use secagg.ring_bits=0 (auto) or 64")
        f = f or bits // 2
        if f > bits - 8:
            raise ConfigError(f"config key 'secagg.fraction_bits': {f} leaves no integer range in a {bits}-bit ring; expected <= {bits - 8}")
        return bits, f
    what = f"{n} clients' {name} uploads (values up to {declared.max_abs:g} at a step of {declared.resolution:g}" + (f", counts up to {declared.max_count})" if declared.max_count else ")")
    rings = (bits,) if bits else (8, 16, 32, 64)
    if f > max(rings) - 8:
        raise ConfigError(f"config key 'secagg.fraction_bits': {f} leaves no integer range in a {max(rings)}-bit ring; expected <= {max(rings) - 8}")
    try:
        return crypto.words_for(n, declared.max_abs, 2.0**-f if f else declared.resolution, declared.max_count, rings)
    except ValueError:
        pass
    if f and _fits(n, declared, declared.resolution, rings):
        raise ConfigError(f"config key 'secagg.fraction_bits': {f} fraction bits leave {'no ring' if not bits else f'{bits}-bit words'} room for the sum of {what}; use fewer, or secagg.fraction_bits=0 (the declared precision)")
    if bits and _fits(n, declared, declared.resolution, (8, 16, 32, 64)):
        raise ConfigError(f"config key 'secagg.ring_bits': {bits}-bit words cannot hold the sum of {what}; use secagg.ring_bits=0 (the smallest ring that holds it) or a larger one")
    raise ConfigError(f"config key 'secagg.protocol': 64-bit words cannot hold the sum of {what}; use fewer clients per round")


def _fits(n: int, declared, resolution: float, rings: tuple[int, ...]) -> bool:
    from featherfl.secagg import crypto

    try:
        crypto.words_for(n, declared.max_abs, resolution, declared.max_count, rings)
        return True
    except ValueError:
        return False


def adapt(cfg: Config, method) -> tuple[Config, list[str]]:
    """The config with the settings a sum needs, where the user left them at their defaults,
    and one note per change (printed, and kept in ``summary.json`` and ``config.toml``).

    ``--set secagg.protocol=secagg+`` alone must work: the method's summation names the
    defaults it cannot serve (``Summation.compatible_defaults``: e.g. ``weighting = capped``,
    whose median claim the sum hides). A setting the user chose explicitly is never changed:
    :func:`validate` refuses it with a one-line message naming the fix.
    """
    if not enabled(cfg) or method.summation is None:
        return cfg, []
    chosen = {k: v for k, v in method.summation.compatible_defaults(cfg, method.name).items() if k not in cfg.explicit}
    if not chosen:
        return cfg, []
    explicit = cfg.explicit
    adapted = cfg.replace(**chosen)
    adapted.explicit = explicit | set(chosen)  # recorded in config.toml from now on, so a resume keeps them
    notes = [f"secagg.protocol={cfg['secagg.protocol']}: {k} = {v} chosen (the default {cfg[k]} cannot work under secure aggregation; set {k} to choose another)" for k, v in chosen.items()]
    return adapted, notes


def validate(cfg: Config, method) -> None:
    """Config-time checks (exit 2): the method's declaration, the participant count, the extra.
    ``method`` is the configured ``Algorithm`` class."""
    if not enabled(cfg):
        return
    if method.summation is None:
        raise ConfigError(f"config key 'secagg.protocol': {cfg['algorithm']} is not supported with secure aggregation: its server needs each client's own upload, not only their sum")
    method.summation.check(cfg, method.name)
    expected = participants(cfg)
    if expected < 3:
        raise ConfigError(f"config key 'secagg.protocol': {expected} clients per round; secure aggregation needs at least 3 (with 2, each learns the other's upload from the sum)")
    words(cfg, method.summation, method.name)  # a ring that cannot hold the declared range: refused now
    try:
        import flwr.common.secure_aggregation.crypto.shamir  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigError("config key 'secagg.protocol': secure aggregation needs the secagg extra: pip install 'featherfl[secagg]'") from None
