"""The automatic thread choice (``engine.threads = 0``): see featherfl/threads.py for the measurements behind it."""

from featherfl import threads
from featherfl.schema import build_config
from featherfl.experiment import prepare


def test_configured_threads_win():
    assert threads.choose_threads(3, 10**9) == 3


def test_small_models_get_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0)
    assert threads.choose_threads(0, threads.SMALL_MODEL - 1) == 1


def test_large_models_use_only_idle_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 3)
    assert threads.choose_threads(0, 10**7) == 5
    monkeypatch.setattr(threads, "busy_cores", lambda: 20)
    assert threads.choose_threads(0, 10**7) == 1


def test_busy_cores_reads_a_number():
    assert threads.busy_cores() >= 0


def test_prepare_applies_and_records_the_choice():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what torch picks by default on a 2-core machine
    try:
        p = prepare(build_config(None, [("clients", "3"), ("engine.threads", "0")]))
        assert p.algorithm.model_parameters() < threads.SMALL_MODEL
        assert torch.get_num_threads() == 1 == p.ctx.info["threads"]
    finally:
        torch.set_num_threads(before)
