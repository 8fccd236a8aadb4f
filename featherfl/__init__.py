"""featherfl: communication-light federated learning, measured in real encoded bytes.

From Python: ``featherfl.run(config, out=..., model=..., dataset=...)`` and
``featherfl.load_run(path)`` (see ``featherfl.api``), ``featherfl.load_model(path)`` (the trained
model, see ``featherfl.export``); from a shell: ``featherfl run``.
"""

from featherfl.version import __version__

__all__ = ["run", "load_run", "load_model", "Result"]


def __getattr__(name: str):
    """Import the API on first use, so ``import featherfl`` (and the CLI's start-up) stays light."""
    if name == "load_model":
        from featherfl.export import load_model

        return load_model
    if name in __all__:
        from featherfl import api

        return getattr(api, name)
    raise AttributeError(f"module 'featherfl' has no attribute {name!r}")
