"""The compression wrapper: on the ledger as encoded, error feedback kept across a resume, hostile
encodings counted as rejections, one-line refusals where it cannot apply."""

import json
import math

import numpy as np
import pytest
import torch

from featherfl import cli, wire
from featherfl.compress.wrapper import KIND, Compress, payload_class
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import prepare
from featherfl.runfolder import load_checkpoint

BASE = ["--algorithm", "fedavg", "--dataset", "digits", "--clients", "4", "--quiet", "--set", "log.plots=false"]


def _run(out, *extra, rounds=2):
    return cli.main(["run", *BASE, "--rounds", str(rounds), "--out", str(out), *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _cfg(**sets):
    return build_config(overrides=list({"dataset": "digits", "clients": 4, "rounds": 2, **sets}.items()))


def test_ledger_counts_the_encoded_compressed_reply(tmp_path):
    """sign: 1 codec byte + per layer a float32 scale and ceil(n/8) sign bytes, inside the wire envelope."""
    out = tmp_path / "run"
    assert _run(out, "--set", "compress.method=sign") == 0
    p = prepare(_cfg(**{"compress.method": "sign"}))
    model = p.algorithm.global_model
    from featherfl.models import state_tensors

    data = 1 + sum(4 + math.ceil(t.numel() / 8) for _, t in state_tensors(model))
    samples = json.loads((out / "clients.json").read_text())["samples"]
    cls = payload_class(("num_samples",), "weights")
    for row in _rows(out):
        for cid, n in row["bytes_up_per_client"].items():
            expected = len(wire.encode(cls(data=torch.zeros(data, dtype=torch.uint8), num_samples=samples[int(cid)])))
            assert n == expected
        assert row["bytes_by_category"]["up_weights"] == row["bytes_up"]
    dense = sum(t.numel() for _, t in state_tensors(model)) * 4
    assert data < dense / 25


def test_topk_error_feedback_survives_a_resume_identically(tmp_path):
    sets = ["--set", "compress.method=topk", "--set", "compress.ratio=0.05"]
    straight, split = tmp_path / "a", tmp_path / "b"
    assert _run(straight, *sets, rounds=4) == 0
    assert _run(split, *sets, rounds=2) == 0
    ck = load_checkpoint(split / "checkpoint.pt")
    residual = ck["client_states"][0]["compress"]["residual"]["weights"]
    assert residual.abs().sum() > 0  # what top-k dropped is kept for the next round
    assert cli.main(["run", "--resume", "--out", str(split), "--rounds", "4", "--quiet", "--set", "log.plots=false"]) == 0
    keys = ("accuracy", "loss", "bytes_up", "bytes_down", "bytes_up_per_client")
    assert [{k: r[k] for k in keys} for r in _rows(straight)] == [{k: r[k] for k in keys} for r in _rows(split)]


def test_error_feedback_changes_the_run_and_off_keeps_no_residual(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    assert _run(on, "--set", "compress.method=topk", "--set", "compress.ratio=0.02") == 0
    assert _run(off, "--set", "compress.method=topk", "--set", "compress.ratio=0.02", "--set", "compress.error_feedback=off") == 0
    assert _rows(on)[-1]["accuracy"] != _rows(off)[-1]["accuracy"]
    ck = load_checkpoint(off / "checkpoint.pt")
    assert ck["client_states"][0]["compress"]["residual"] == {}


def test_fedsgd_gradients_compress_without_a_reference(tmp_path):
    out = tmp_path / "sgd"
    assert cli.main(["run", "--algorithm", "fedsgd", "--dataset", "digits", "--clients", "4", "--rounds", "3", "--out", str(out), "--quiet", "--set", "log.plots=false", "--set", "compress.method=qsgd", "--set", "compress.bits=8"]) == 0
    dense = tmp_path / "dense"
    assert cli.main(["run", "--algorithm", "fedsgd", "--dataset", "digits", "--clients", "4", "--rounds", "3", "--out", str(dense), "--quiet", "--set", "log.plots=false"]) == 0
    a, b = _rows(out)[-1], _rows(dense)[-1]
    assert abs(a["accuracy"] - b["accuracy"]) < 0.05  # 8-bit QSGD of a gradient is nearly the gradient
    assert a["bytes_up"] < b["bytes_up"] / 3.5
    assert a["clients_rejected"] == 0


def test_batched_clients_give_the_sequential_result(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    sets = ["--set", "compress.method=powersgd", "--set", "compress.rank=2"]
    assert _run(a, *sets, "--set", "engine.vectorize=off") == 0
    assert _run(b, *sets, "--set", "engine.vectorize=auto") == 0
    ra, rb = _rows(a), _rows(b)
    assert [r["bytes_up"] for r in ra] == [r["bytes_up"] for r in rb]
    assert abs(ra[-1]["accuracy"] - rb[-1]["accuracy"]) < 0.02


def _reply_and_spec(method="topk"):
    p = prepare(_cfg(**{"compress.method": method, "compress.ratio": 0.05}))
    alg = p.algorithm
    assert isinstance(alg, Compress)
    downs = alg.configure(1, [0])
    client = alg.make_client()
    down = wire.decode(wire.encode(downs[0], 1, p.ctx.run_id), client.downlink_specs(1), round=1, run=p.ctx.run_id)
    reply = client.update(1, down, p.client_data[0], {})
    return p, alg, reply


def test_hostile_encodings_are_rejected_with_a_reason_and_good_ones_rebuild_the_method_reply():
    p, alg, reply = _reply_and_spec()
    specs = alg.uplink_specs(1, 0)
    good = wire.encode(reply, 1, p.ctx.run_id)
    back = wire.decode(good, specs, round=1, run=p.ctx.run_id)
    from featherfl.models import flat_state

    changed = (back.rebuilt.weights != flat_state(alg.global_model)).float().mean()
    assert 0 < changed <= 0.06  # top-5 % per layer of the update, added to the weights sent
    g = np.random.default_rng(0)
    reasons = set()
    blob = reply.data.numpy().tobytes()
    for trial in range(300):
        b = bytearray(blob)
        if trial % 3 == 0:
            for _ in range(1 + trial % 5):
                b[int(g.integers(0, len(b)))] = int(g.integers(0, 256))
        elif trial % 3 == 1:
            b = b[: int(g.integers(0, len(b)))]
        else:
            b = b + bytes(int(g.integers(1, 5)))
        bad = type(reply)(data=torch.frombuffer(bytearray(b) or bytearray(1), dtype=torch.uint8), num_samples=reply.num_samples)
        try:
            out = wire.decode(wire.encode(bad, 1, p.ctx.run_id), specs, round=1, run=p.ctx.run_id)
        except wire.PayloadError as e:
            reasons.add(e.reason)
            continue
        assert torch.isfinite(out.rebuilt.weights).all()
    assert {"truncated", "trailing-bytes"} <= reasons


def test_an_engine_counts_a_hostile_compressed_reply_as_rejected(tmp_path, monkeypatch):
    from featherfl.compress import wrapper

    real = wrapper.CompressClient.compress

    def corrupt(self, rnd, cid, down, reply, state):
        out = real(self, rnd, cid, down, reply, state)
        if cid == 1:
            return type(out)(data=out.data[:-3].clone(), num_samples=out.num_samples)
        return out

    monkeypatch.setattr(wrapper.CompressClient, "compress", corrupt)
    out = tmp_path / "run"
    assert _run(out, "--set", "compress.method=qsgd") == 0
    rows = _rows(out)
    assert all(r["clients_rejected"] == 1 and r["rejected_reasons"] == {"truncated": 1} for r in rows)
    assert all(r["aggregated"] for r in rows)


@pytest.mark.parametrize(
    "sets,needle",
    [
        ({"algorithm": "baffle", "compress.method": "topk"}, "baffle uploads scalars"),
        ({"algorithm": "fd", "compress.method": "qsgd"}, "fd uploads logits"),
        ({"compress.method": "sign", "secagg.protocol": "secagg+"}, "secure aggregation"),
    ],
)
def test_refused_in_one_line(sets, needle):
    with pytest.raises(ConfigError) as e:
        prepare(_cfg(**sets))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_doc_lists_the_keys():
    from featherfl.schema import reference_markdown

    doc = reference_markdown()
    for key in ("compress.method", "compress.ratio", "compress.bits", "compress.rank", "compress.error_feedback"):
        assert key in doc
    assert KIND == "compress.up"
