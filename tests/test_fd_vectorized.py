"""FD's batched local training (engine.vectorize = auto) gives every device what its own
sequential ``update`` gives it: the same per-label output sums and counts on the wire, the
same model kept in its state, round after round, with teachers that differ per device."""

import copy
import json

import pytest
import torch

from featherfl.algorithms import fd
from featherfl.schema import build_config
from featherfl.experiment import prepare, run_experiment


def _prepared(*extra):
    over = [("algorithm", "fd"), ("clients", 4), ("partition.name", "dirichlet"), ("engine.threads", 1), ("fd.local_steps", 12), ("fd.batch_size", 16)]
    return prepare(build_config(None, over + list(extra)))


def _teachers(cids, L, rnd):
    """A different teacher per device; some labels have none (contributors 0)."""
    g = torch.Generator().manual_seed(rnd)
    out = {}
    for cid in cids:
        contributors = torch.randint(0, 3, (L,), generator=g, dtype=torch.int32)
        out[cid] = fd.TeacherDown(torch.softmax(3 * torch.randn(L, L, generator=g), 1), contributors)
    return out


def _both(p, rounds=2):
    """Run the devices one by one and batched from the same states; return both sides per round."""
    client = p.algorithm.make_client()
    data = {c.cid: c for c in p.client_data}
    seq_states = {cid: {} for cid in data}
    vec_states = {cid: {} for cid in data}
    rows = []
    for rnd in range(1, rounds + 1):
        downs = _teachers(list(data), p.ctx.num_classes, rnd)
        seq = {cid: client.update(rnd, downs[cid], data[cid], seq_states[cid]) for cid in data}
        vec = client.update_many(rnd, downs, data, vec_states)
        rows.append((seq, vec))
    return client, rows, seq_states, vec_states


@pytest.mark.parametrize("extra", [[], [("fd.optimizer", "adam"), ("fd.lr", 0.003)], [("fd.logit_noise", 0.5)], [("fd.gamma", 0.0)]], ids=["sgd", "adam", "noise", "no-distillation"])
def test_batched_devices_equal_their_sequential_updates(extra):
    p = _prepared(*extra)
    client, rows, seq_states, vec_states = _both(p)
    assert client.can_update_many()
    for seq, vec in rows:
        assert set(seq) == set(vec)
        for cid in seq:
            assert torch.equal(seq[cid].counts, vec[cid].counts)
            err = float((seq[cid].logits - vec[cid].logits).abs().max())
            assert err < 1e-4, (cid, err)
    start = {k: v.detach().clone() for k, v in client._model({}, 0).named_parameters()}
    for cid in seq_states:
        a, b = seq_states[cid]["model"], vec_states[cid]["model"]
        moved = max(float((a[k] - start[k]).abs().max()) for k in start)
        err = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert moved > 1e-3
        assert err < (1e-4 if not extra or extra[0][0] != "fd.optimizer" else 1e-2 * moved), (cid, err, moved)


def test_the_teacher_term_reaches_the_batched_loss():
    """The same devices with and without distillation end differently: the batched loss uses each teacher."""
    _, with_t, _, a = _both(_prepared(("fd.gamma", 1.0)), rounds=1)
    _, without, _, b = _both(_prepared(("fd.gamma", 0.0)), rounds=1)
    assert any(float((a[c]["model"][k] - b[c]["model"][k]).abs().max()) > 1e-4 for c in a for k in a[c]["model"])


def test_heterogeneous_devices_run_one_by_one():
    p = _prepared(("fd.models", ["mlp", "lenet"]))
    assert not p.algorithm.make_client().can_update_many()


def _run(tmp_path, vectorize):
    over = [("algorithm", "fd"), ("clients", 5), ("rounds", 3), ("fd.local_steps", 10), ("engine.threads", 1), ("engine.vectorize", vectorize)]
    out, s = run_experiment(build_config(None, over), tmp_path / vectorize)
    return s, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fd_run_batched_equals_one_by_one_and_batches(tmp_path, monkeypatch):
    calls = []
    real = fd.FDClient.update_many
    monkeypatch.setattr(fd.FDClient, "update_many", lambda self, *a: calls.append(1) or real(self, *a))
    (sa, ra), (so, ro) = _run(tmp_path, "auto"), _run(tmp_path, "off")
    assert calls, "engine.vectorize=auto did not batch FD devices"
    assert [r["bytes_up"] for r in ra] == [r["bytes_up"] for r in ro]
    for a, o in zip(ra, ro):
        assert abs(a["accuracy"] - o["accuracy"]) < 0.01


def test_batched_path_keeps_the_sequential_state_layout():
    """A device trained batched can continue one by one (same state keys, same tensors)."""
    p = _prepared()
    client, _, seq_states, vec_states = _both(p, rounds=1)
    for cid in seq_states:
        assert seq_states[cid].keys() == vec_states[cid].keys()
        assert seq_states[cid]["model"].keys() == vec_states[cid]["model"].keys()
    data = p.client_data[0]
    down = _teachers([0], p.ctx.num_classes, 7)[0]
    up = client.update(2, down, data, copy.deepcopy(vec_states[0]))
    assert up.logits.shape == (p.ctx.num_classes, p.ctx.num_classes)


def test_a_round_too_large_for_one_batched_call_is_split_and_still_equal(monkeypatch):
    """Under a small memory budget the devices train in several batched calls, with the same results."""
    from featherfl.algorithms import vectorized

    calls = []
    real = vectorized.train_clients
    monkeypatch.setattr(vectorized, "train_clients", lambda model, runs, *a, **k: calls.append(len(runs)) or real(model, runs, *a, **k))
    p = _prepared()
    params = sum(t.numel() for t in p.algorithm.make_client()._model({}, 0).parameters())
    monkeypatch.setattr(vectorized, "MEMORY_BUDGET", 4 * 2 * (5 * params + 2000 * 64))  # about two devices per call
    client, rows, seq_states, vec_states = _both(p, rounds=1)
    assert len(calls) >= 2 and sum(calls) == 4  # split, every device trained once
    for seq, vec in rows:
        for cid in seq:
            assert torch.equal(seq[cid].counts, vec[cid].counts)
            assert float((seq[cid].logits - vec[cid].logits).abs().max()) < 1e-4
    for cid in seq_states:
        assert max(float((seq_states[cid]["model"][k] - vec_states[cid]["model"][k]).abs().max()) for k in seq_states[cid]["model"]) < 1e-4


def test_a_failing_batched_call_falls_back_to_one_by_one_with_the_same_results(tmp_path, monkeypatch):
    """The batched call fails after training: no device state was written, the engine reruns them one by one."""
    def broken(self, *a):
        raise RuntimeError("batched step failed")

    monkeypatch.setattr(fd.FDClient, "_upload", lambda self, *a: broken(self))
    monkeypatch.setattr(fd.FDClient, "update", lambda self, rnd, down, data, state: _real_update(self, rnd, down, data, state))
    (sa, ra), (so, ro) = _run(tmp_path / "broken", "auto"), _run(tmp_path / "plain", "off")
    assert all(r["clients_ok"] == 5 for r in ra)  # nobody lost
    assert [r["accuracy"] for r in ra] == [r["accuracy"] for r in ro]


def _real_update(self, rnd, down, data, state):
    """FDClient.update with the real upload (the test breaks ``_upload`` for the batched path only)."""
    up = fd.FDClient._upload
    try:
        fd.FDClient._upload = _REAL_UPLOAD
        return _REAL_UPDATE(self, rnd, down, data, state)
    finally:
        fd.FDClient._upload = up


_REAL_UPLOAD = fd.FDClient._upload
_REAL_UPDATE = fd.FDClient.update
