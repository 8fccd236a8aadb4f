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
        raise ConfigError(
            f"config key 'compress.method': {cfg['compress.method']} cannot run under secure aggregation: the server must decode each client's own compressed update, which masking hides; use compress.method=none with secagg.protocol={cfg['secagg.protocol']}"
        )
