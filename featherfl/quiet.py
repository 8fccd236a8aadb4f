"""``--quiet``: nothing but featherfl's own result line and errors reaches the terminal.

Third-party libraries talk on their own channels: Python warnings, the ``logging``
module (transformers, peft, Ray, Flower), Hugging Face progress bars and a few direct
prints to stderr. A quiet run closes each of those channels for the libraries, once,
before anything is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
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
    # transformers reads TRANSFORMERS_VERBOSITY and HF_HUB_DISABLE_PROGRESS_BARS when it is first
    # imported, so a job that never loads it pays nothing (importing it costs ~0.6 s). Only an
    # already-loaded transformers needs its own API to change its handler and level.
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
