"""featherfl: communication-light federated learning, measured in real encoded bytes."""

__version__ = "0.1.0"
