"""FD (Jeong et al. 2018, Alg. 1): per-label means up, leave-one-out teacher down, no global model."""

import json

import pytest
import torch

from featherfl import wire
from featherfl.algorithms.base import ClientData, Context
from featherfl.algorithms.fd import (
    FD,
    FDClient,
    LogitsUp,
    TeacherDown,
    accumulate,
    dp_epsilon,
    label_means,
    leave_one_out,
)
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import Experiment, config_for_resume, prepare
from support.rows import metric_rows
from support.wire_overhead import header_bytes

L = 10
SMALL = [
    ("algorithm", "fd"),
    ("dataset", "synthetic"),
    ("data.synthetic_samples", 600),
    ("clients", 3),
    ("rounds", 2),
    ("model.name", "mlp"),
    ("model.width", 16),
    ("partition.name", "label-deficient"),
    ("fd.local_steps", 5),
    ("fd.batch_size", 16),
    ("engine.threads", 1),
]


def _cfg(*extra):
    return build_config(overrides=SMALL + list(extra))


def _ctx(cfg, clients=3):
    return Context(cfg, (1, 8, 8), L, clients)


def _data(cid=0, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % L
    x = (torch.rand(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) / L).clamp(0, 1)
    return ClientData(cid, x, y, L)


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    summary = Experiment(prepare(_cfg(*extra)), out, progress=False).run()
    return metric_rows(out / "metrics.jsonl"), summary


# --- the per-label means and the teacher --------------------------------------------------


def test_per_label_means_hand_computed():
    sums, counts = torch.zeros(3, 3), torch.zeros(3, dtype=torch.int64)
    accumulate(sums, counts, torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.8, 0.0]]), torch.tensor([0, 1]))
    accumulate(sums, counts, torch.tensor([[0.4, 0.5, 0.1], [1.0, 0.0, 0.0]]), torch.tensor([0, 0]))
    assert counts.tolist() == [3, 1, 0]
    means = label_means(sums, counts)
    assert torch.allclose(means[0], torch.tensor([2.0, 0.8, 0.2]) / 3)
    assert torch.allclose(means[1], torch.tensor([0.2, 0.8, 0.0]))
    assert means[2].abs().sum() == 0  # never seen: zero row, count 0


def test_leave_one_out_hand_computed():
    v = torch.zeros(3, 2, 2)
    v[0] = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    v[1] = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    v[2] = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    present = torch.tensor([[True, True], [True, True], [True, False]])  # device 2 lacks label 1
    t, n = leave_one_out(v, present)
    assert torch.allclose(t[0, 0], torch.tensor([0.6, 0.4]))  # (0.7+0.5)/2, (0.3+0.5)/2
    assert torch.allclose(t[2, 0], torch.tensor([0.8, 0.2]))
    assert torch.allclose(t[0, 1], torch.tensor([0.1, 0.9]))  # only device 1 has label 1 besides 0
    assert torch.allclose(t[2, 1], torch.tensor([0.2, 0.8]))
    assert n.tolist() == [[2, 1], [2, 1], [2, 2]]


def test_leave_one_out_absent_when_nobody_else_has_the_label():
    v = torch.rand(2, 2, 2)
    present = torch.tensor([[True, True], [True, False]])
    t, n = leave_one_out(v, present)
    assert n[1, 1] == 1 and n[0, 1] == 0
    assert t[0, 1].abs().sum() == 0


def test_robust_teacher_ignores_one_outlier():
    v = torch.full((5, 2, 2), 0.5)
    v[4] = 1e3
    present = torch.ones(5, 2, dtype=torch.bool)
    median, _ = leave_one_out(v, present, rule="median")
    mean, _ = leave_one_out(v, present, rule="mean")
    assert torch.allclose(median[0], torch.full((2, 2), 0.5))
    assert mean[0].max() > 100


def test_teacher_for_a_device_excludes_its_own_upload():
    cfg = _cfg()
    alg = FD(_ctx(cfg))
    g = torch.Generator().manual_seed(1)
    ups = {c: LogitsUp(torch.softmax(torch.randn(L, L, generator=g), 1), torch.full((L,), 5, dtype=torch.int32)) for c in range(3)}
    alg.aggregate(1, ups)
    before = alg.configure(2, [0, 1, 2])
    ups[0] = LogitsUp(torch.softmax(torch.randn(L, L, generator=g), 1), ups[0].counts)
    alg.aggregate(2, {0: ups[0]})
    after = alg.configure(3, [0, 1, 2])
    assert torch.equal(before[0].teacher, after[0].teacher)
    assert not torch.allclose(before[1].teacher, after[1].teacher)
    assert not torch.allclose(before[2].teacher, after[2].teacher)
    # and device 1's teacher is exactly the mean of devices 0 and 2
    assert torch.allclose(after[1].teacher, (ups[0].logits + ups[2].logits) / 2)


def test_first_round_has_no_teacher():
    alg = FD(_ctx(_cfg()))
    down = alg.configure(1, [0, 1, 2])
    assert all(int(d.contributors.sum()) == 0 for d in down.values())


# --- the local objective ------------------------------------------------------------------


def _update(cfg, teacher, contributors, state=None, rnd=2):
    client = FDClient(_ctx(cfg))
    state = {} if state is None else state
    up = client.update(rnd, TeacherDown(teacher, contributors), _data(), state)
    return up, state


def test_gamma_zero_is_independent_local_training():
    """With gamma = 0 the teacher has no effect at all; with gamma > 0 it does (the test can fail)."""
    g = torch.Generator().manual_seed(3)
    t1, t2 = torch.softmax(torch.randn(L, L, generator=g), 1), torch.softmax(torch.randn(L, L, generator=g), 1)
    present = torch.full((L,), 2, dtype=torch.int32)
    none = torch.zeros(L, dtype=torch.int32)
    for gamma, same in ((0.0, True), (1.0, False)):
        cfg = _cfg(("fd.gamma", gamma))
        a, sa = _update(cfg, t1, present)
        b, _ = _update(cfg, t2, present)
        c, sc = _update(cfg, torch.zeros(L, L), none)  # no teacher at all: plain local training
        assert torch.equal(a.logits, b.logits) == same
        assert torch.equal(a.logits, c.logits) == same
        assert all(torch.equal(sa["model"][k], sc["model"][k]) for k in sa["model"]) == same


def test_regulariser_pulls_outputs_toward_the_teacher():
    """A teacher saying every label looks like label 7 raises the model's probability of 7."""
    teacher = torch.zeros(L, L)
    teacher[:, 7] = 1.0
    present = torch.full((L,), 2, dtype=torch.int32)
    p7 = {}
    for gamma in (0.0, 3.0):
        up, _ = _update(_cfg(("fd.gamma", gamma), ("fd.local_steps", 20)), teacher, present)
        p7[gamma] = float(up.logits[:, 7].mean())
    assert p7[3.0] > p7[0.0] + 0.1


def test_upload_rows_are_per_label_means_of_softmax_outputs():
    up, _ = _update(_cfg(), torch.zeros(L, L), torch.zeros(L, dtype=torch.int32))
    assert up.counts.sum() == 16 + 16 + 16 + 12 + 16  # one output per sample seen: 60 samples, batches of 16, 5 steps
    seen = up.counts > 0
    assert torch.allclose(up.logits[seen].sum(1), torch.ones(int(seen.sum())), atol=1e-5)
    assert up.logits[~seen].abs().sum() == 0


def test_client_state_keeps_its_own_model_across_rounds():
    cfg = _cfg()
    _, state = _update(cfg, torch.zeros(L, L), torch.zeros(L, dtype=torch.int32))
    w1 = {k: v.clone() for k, v in state["model"].items()}
    _update(cfg, torch.zeros(L, L), torch.zeros(L, dtype=torch.int32), state=state, rnd=3)
    assert any(not torch.equal(w1[k], state["model"][k]) for k in w1)


# --- wire ---------------------------------------------------------------------------------


def test_bytes_per_device_are_4L2_plus_counts_plus_header(tmp_path):
    rows, _ = _run(tmp_path, "bytes")
    header_up = header_bytes(LogitsUp(torch.zeros(L, L), torch.zeros(L, dtype=torch.int32)))
    header_down = header_bytes(TeacherDown(torch.zeros(L, L), torch.zeros(L, dtype=torch.int32)))
    assert header_up < 200 and header_down < 200
    for row in rows:
        assert set(row["bytes_by_category"]) == {"up_logits", "down_logits"}
        assert set(row["bytes_up_per_client"].values()) == {4 * L * L + 4 * L + header_up}
        assert set(row["bytes_down_per_client"].values()) == {4 * L * L + 4 * L + header_down}


def test_uplink_spec_rejects_vectors_outside_the_simplex_unless_noisy():
    alg = FD(_ctx(_cfg()))
    bad = wire.encode(LogitsUp(torch.full((L, L), 2.0), torch.ones(L, dtype=torch.int32)), 1, 0)
    with pytest.raises(wire.PayloadError):
        wire.decode(bad, alg.uplink_specs(1, 0), round=1, run=0)
    noisy = FD(_ctx(_cfg(("fd.logit_noise", 1.0))))
    assert wire.decode(bad, noisy.uplink_specs(1, 0), round=1, run=0).logits.max() == 2.0


# --- runs ---------------------------------------------------------------------------------


def test_run_reports_per_client_accuracy_and_a_seeded_reference(tmp_path):
    rows, summary = _run(tmp_path, "run")
    last = rows[-1]
    accs = list(last["accuracy_per_client"].values())
    assert len(accs) == 3
    assert last["accuracy_min"] == min(accs) and last["accuracy_max"] == max(accs)
    assert last["accuracy"] == pytest.approx(sum(accs) / 3)
    ref = last["reference_client"]
    assert last["accuracy_reference"] == last["accuracy_per_client"][str(ref)]
    assert FD(_ctx(_cfg())).reference_client == ref  # chosen by the seed alone
    assert summary["model_parameters"] > 0


def test_heterogeneous_models_round_robin(tmp_path):
    out = tmp_path / "het"
    p = prepare(_cfg(("fd.models", ["mlp", "lenet"])))
    exp = Experiment(p, out, progress=False)
    summary = exp.run()
    states = exp.engine.client_states()
    assert [states[c]["model_name"] for c in range(3)] == ["mlp", "lenet", "mlp"]
    assert summary["client_models"] == {"0": "mlp", "1": "lenet", "2": "mlp"}
    assert summary["final_accuracy"] is not None


def test_unknown_model_in_fd_models_is_a_config_error():
    with pytest.raises(ConfigError, match="fd.models"):
        prepare(_cfg(("fd.models", ["mlp", "nope"])))


def test_same_config_same_metrics_and_resume_is_identical(tmp_path):
    full, _ = _run(tmp_path, "full", ("rounds", 3))
    again, _ = _run(tmp_path, "again", ("rounds", 3))
    assert full == again
    _run(tmp_path, "part", ("rounds", 2))
    cfg = config_for_resume(tmp_path / "part", [("rounds", 3)])
    Experiment(prepare(cfg), tmp_path / "part", resume=True, progress=False).run()
    assert metric_rows(tmp_path / "part" / "metrics.jsonl") == full


# --- logit noise ----------------------------------------------------------------------------


def test_noisy_upload_and_reported_epsilon(tmp_path):
    rows, summary = _run(tmp_path, "noisy", ("fd.logit_noise", 2.0))
    assert rows[-1]["dp_epsilon"] > rows[0]["dp_epsilon"] > 0
    assert summary["dp_delta"] == 1e-5 and summary["dp_epsilon"] == rows[-1]["dp_epsilon"]
    clean, _ = _update(_cfg(), torch.zeros(L, L), torch.zeros(L, dtype=torch.int32))
    noisy, _ = _update(_cfg(("fd.logit_noise", 2.0)), torch.zeros(L, L), torch.zeros(L, dtype=torch.int32))
    assert torch.equal(clean.counts, noisy.counts)
    assert (noisy.logits - clean.logits).std() > 1.0  # std = 2 x 2 C sqrt(L) ~ 12.6


def test_epsilon_falls_with_noise_and_grows_with_rounds():
    assert dp_epsilon(2.0, 10, 1e-5) < dp_epsilon(1.0, 10, 1e-5)
    assert dp_epsilon(1.0, 20, 1e-5) > dp_epsilon(1.0, 10, 1e-5)
    assert dp_epsilon(1.0, 0, 1e-5) == 0.0


def test_vectorised_mean_teacher_matches_the_per_label_combine():
    g = torch.Generator().manual_seed(5)
    v = torch.softmax(torch.randn(6, L, L, generator=g), 2)
    present = torch.rand(6, L, generator=g) > 0.3
    fast, n_fast = leave_one_out(v, present, rule="mean")
    slow, n_slow = leave_one_out(v, present, rule="trimmed-mean", beta=0.0)  # no trimming = plain mean, via combine
    assert torch.allclose(fast, slow, atol=1e-6) and torch.equal(n_fast, n_slow)


def test_teachers_of_a_cohort_are_those_rows_of_every_devices_teachers():
    """The server builds teachers only for the round's devices (a round at 10^5 devices must not
    cost 10^5 teachers); they equal the same devices' rows of the full computation, for every rule,
    and the mean is the plain per-device sum over the others."""
    g = torch.Generator().manual_seed(7)
    m = 40
    v = torch.softmax(torch.randn(m, L, L, generator=g), 2)
    present = torch.rand(m, L, generator=g) > 0.4
    present[3] = False  # a device that never reported
    ids = [31, 3, 0, 17]
    for rule in ("mean", "median", "trimmed-mean", "norm-clip"):
        full_t, full_n = leave_one_out(v, present, rule=rule)
        t, n = leave_one_out(v, present, rule=rule, ids=ids)
        assert torch.equal(t, full_t[ids]) and torch.equal(n, full_n[ids]), rule
    t, _ = leave_one_out(v, present, rule="mean", ids=ids)
    w = present.float()
    for k, i in enumerate(ids):
        others = w.clone()
        others[i] = 0
        expect = (v * others.unsqueeze(2)).sum(0) / others.sum(0).clamp_min(1).unsqueeze(1)
        assert torch.allclose(t[k], expect, atol=1e-6)
