"""Uplink compression around any method whose upload is dense weights or gradients: ``compress.method``.

``codecs.py`` holds the compressors and their validating decoders, ``encoding.py`` the byte-level
pieces, ``wrapper.py`` the ``Compress(inner)`` algorithm wrapper and its client half, which
``featherfl.assembly`` installs. The ledger counts the encoded compressed bytes.
"""

from __future__ import annotations

from featherfl.config import Config, ConfigError, Field

EF_BY_DEFAULT = ("topk", "sign", "powersgd")  # the biased compressors

COMPRESS_CONFIG = {
    "compress.method": Field("str", "none", "Uplink compression of each client's update: none, topk, randk, qsgd, sign or powersgd (FedAvg, FedSGD, FedPEFT: methods whose upload is dense weights or gradients).", choices=("none", "topk", "randk", "qsgd", "sign", "powersgd")),
    "compress.ratio": Field("float", 0.01, "topk, randk: share of each tensor's entries sent (density, e.g. 0.01 = 1 %).", min=0.0, max=1.0, min_exclusive=True),
    "compress.bits": Field("int", 4, "qsgd: bits per entry, sign included: levels -s..s with s = 2^(bits-1) - 1.", min=2, max=8),
    "compress.bucket": Field("int", 512, "qsgd: entries per bucket sharing one float32 norm.", min=1, max=2**24),
    "compress.rank": Field("int", 2, "powersgd: rank r of the factors P and Q.", min=1, max=1024),
    "compress.error_feedback": Field("str", "auto", "Clients keep what compression dropped and add it to their next update: auto (on for the biased topk, sign, powersgd), on, off.", choices=("auto", "on", "off")),
    "compress.sign_aggregation": Field("str", "mean", "sign: the server's rule: mean (the method's own aggregation of the decoded scaled signs) or vote (each entry moves by the majority sign, scaled by the mean magnitude).", choices=("mean", "vote")),
    "compress.downlink": Field("str", "none", "Compress the server-to-client weights too: none, or same (the uplink's codec on the difference between the server's model and the clients' replica, with the server's own error feedback).", choices=("none", "same")),
    "compress.shared_scale": Field("float", 2.0**-2, "qsgd under secure aggregation: the first round's per-layer scale C every client quantises against (levels of x / C); later rounds take it from the previous round's summed histogram of magnitudes (docs/compression.md).", min=0.0, min_exclusive=True),
    "compress.values": Field("str", "float32", "topk, randk, powersgd: the sent values' type (float16 halves them).", choices=("float32", "float16")),
}


def enabled(cfg: Config) -> bool:
    return cfg["compress.method"] != "none"


def error_feedback(cfg: Config) -> bool:
    ef = cfg["compress.error_feedback"]
    return cfg["compress.method"] in EF_BY_DEFAULT if ef == "auto" else ef == "on"


def settings(cfg: Config):
    from featherfl.compress.codecs import Settings

    return Settings(
        method=cfg["compress.method"],
        ratio=cfg["compress.ratio"],
        bits=cfg["compress.bits"],
        bucket=cfg["compress.bucket"],
        rank=cfg["compress.rank"],
        values=cfg["compress.values"],
        error_feedback=error_feedback(cfg),
        seed=cfg["seed"],
    )


def check(cfg: Config) -> None:
    """One-line ConfigError for a combination compression cannot serve."""
    if cfg.get("secagg.protocol", "off") != "off":
        method = cfg["compress.method"]
        why = {
            "topk": "each client keeps its own largest entries, at indices the others do not share, so a masked sum cannot add them",
            "sign": "each client's signs carry its own scale (and a vote needs each client's signs), so a masked sum of them is no sum of updates",
            "powersgd": "its factors P and Q are not linear in the update, so the sum of the clients' factors is not the factors of the summed update",
        }.get(method)
        if why:
            raise ConfigError(f"config key 'compress.method': {method} cannot run under secure aggregation: {why}; use randk (indices shared by every client) or qsgd (a scale shared by every client)")
        if cfg["compress.downlink"] != "none":
            raise ConfigError(f"config key 'compress.downlink': {cfg['compress.downlink']} is not supported under secure aggregation (the sum finishes on the method's own downlink); use compress.downlink=none")
    if cfg["compress.sign_aggregation"] == "vote" and cfg["compress.method"] != "sign":
        raise ConfigError(f"config key 'compress.sign_aggregation': vote needs compress.method=sign, not {cfg['compress.method']}")
