"""``--quiet``: nothing but featherfl's own result line and errors reaches the terminal.

Third-party libraries talk on their own channels: Python warnings, the ``logging``
module (transformers, peft, Ray, Flower), Hugging Face progress bars and a few direct
prints to stderr. A quiet run closes each of those channels for the libraries, once,
before anything is loaded.
"""

from __future__ import annotations

import logging
import os
import warnings

_LOGGERS = ("transformers", "peft", "huggingface_hub", "datasets", "torch", "ray", "flwr", "opacus", "matplotlib", "urllib3", "filelock")


def silence_third_party() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # transformers keeps its own handler and level; set them through its API when it is installed
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
