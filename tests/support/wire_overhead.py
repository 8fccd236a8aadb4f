"""The codec's overhead of a payload, for tests that check byte counts to the byte."""

from featherfl import wire


def header_bytes(payload) -> int:
    """Encoded size minus the raw tensor data bytes: everything the codec adds around the tensors."""
    data = sum(t.numel() * t.element_size() for t in payload.tensor_fields().values())
    return len(wire.encode(payload)) - data
