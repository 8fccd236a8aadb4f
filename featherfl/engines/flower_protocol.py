"""What featherfl's Flower messages carry, in a module light enough to import without torch.

A message's content is a RecordDict with a ``ConfigRecord`` of small scalars and,
when there is one, the encoded featherfl payload (``wire.encode`` bytes) kept raw
as a uint8 ``Array`` in an ``ArrayRecord``: Flower chunks large arrays, and nothing
is pickled. The setup query runs before the node needs torch, so this module must
stay free of it (a ClientApp process starts per message on a SuperNode).
"""

from __future__ import annotations

RECORD = "featherfl"
PAYLOAD = "payload"
SETUP_ACTION = "featherfl_setup"
SETUP = f"query.{SETUP_ACTION}"


def train_type(algorithm: str) -> str:
    return f"train.{algorithm}"


def evaluate_type(algorithm: str) -> str:
    return f"evaluate.{algorithm}"


def pack(payload: bytes | None = None, **scalars):
    """A RecordDict: optional raw payload bytes (an ``Array`` of uint8) plus small scalars."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    rd = RecordDict()
    rd[RECORD] = ConfigRecord({k: v for k, v in scalars.items() if v is not None})
    if payload is not None:
        rd[PAYLOAD] = ArrayRecord({PAYLOAD: Array(dtype="uint8", shape=(len(payload),), stype="featherfl.wire", data=bytes(payload))})
    return rd


def unpack(content) -> tuple[bytes | None, dict]:
    """(payload bytes or None, scalars) from a RecordDict made by :func:`pack`."""
    scalars = dict(content.config_records[RECORD]) if RECORD in content.config_records else {}
    payload = None
    if PAYLOAD in content.array_records:
        payload = bytes(content.array_records[PAYLOAD][PAYLOAD].data)
    return payload, scalars
