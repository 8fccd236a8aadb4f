"""Secure aggregation (SecAgg+): the server gets the sum and only the sum.

Protocol-level tests run ``tests/support/secagg_simulate.py`` (the clients' and server's real code,
every message through the wire codec); method-level tests run whole federated jobs on
digits with and without ``secagg.protocol = secagg+`` and compare the server's state.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from featherfl.config import ConfigError  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from featherfl.secagg import crypto, protocol  # noqa: E402
from support import secagg_simulate as simulate  # noqa: E402


@pytest.fixture
def seeded(monkeypatch):
    """Deterministic secrets (tests only: the protocol draws them from os.urandom)."""
    rng = random.Random(1234)
    monkeypatch.setattr(crypto, "random_bytes", lambda n: bytes(rng.getrandbits(8) for _ in range(n)))


def vectors(n: int, d: int = 40, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-5, 5, d) for c in range(n)}


# --- the protocol ------------------------------------------------------------------------------


@pytest.mark.parametrize("ring_bits,fraction_bits", [(64, 32), (32, 16)])
def test_unmasked_sum_is_the_plain_sum_within_the_stated_bound(seeded, ring_bits, fraction_bits):
    v = vectors(9)
    out = simulate.run_round(v, ring_bits=ring_bits, fraction_bits=fraction_bits)
    assert out.skipped is None
    err = np.abs(out.total - sum(v.values())).max()
    assert err <= simulate.error_bound(9, fraction_bits)
    assert err > 0 or fraction_bits >= 32  # 16 fraction bits must actually round


def test_values_beyond_the_range_are_clipped_and_counted():
    words, clipped = crypto.encode_fixed(np.array([1.0, -1e30, 1e30, 2.0]), 16, crypto.bound_for(4, 16, 32), 32)
    assert clipped == 2
    dec = crypto.decode_fixed(words, 16)
    assert dec[0] == 1.0 and dec[3] == 2.0 and dec[1] < 0 < dec[2]


def test_neighbour_graph_is_k_regular_symmetric_and_threshold_above_half():
    clients = list(range(0, 400, 4))
    k = protocol.neighbour_count(len(clients), 0)
    assert k == 28 and protocol.neighbour_count(10, 0) == 9  # small rounds: everyone
    g = protocol.neighbour_graph(clients, k, seed=5)
    assert all(len(nb) == k and c not in nb for c, nb in g.items())
    assert all(c in g[v] for c, nb in g.items() for v in nb)
    assert g != protocol.neighbour_graph(clients, k, seed=6)  # a fresh graph per round
    for k in (2, 9, 28, 40):
        t = protocol.threshold_for(k, 0.5)
        assert 2 * t > k and t <= k


def test_dropouts_before_and_after_masking_still_unmask(seeded):
    v = vectors(30)
    out = simulate.run_round(v, neighbours=8, drop_before_masking={1, 2}, drop_after_masking={3, 4})
    assert out.skipped is None and out.server.t == 5
    expected = sum(v[c] for c in v if c not in (1, 2))  # 3 and 4 sent masked inputs: they count
    assert np.abs(out.total - expected).max() <= simulate.error_bound(28, 32)


def test_too_many_dropouts_skip_the_round_with_the_reason(seeded):
    v = vectors(12)
    # complete graph of 12: k = 11, t = 6; 7 of the 12 vanish after masking: 5 reveal, fewer than t
    out = simulate.run_round(v, drop_after_masking=set(range(7)))
    assert out.total is None
    assert "fewer than the threshold 6" in out.skipped and "too many clients dropped" in out.skipped


def _flip_first(r: protocol.RevealUp) -> protocol.RevealUp:
    """Alter the share revealed for the first sender asked about."""
    shares = r.shares.clone()
    shares[0, 10] ^= 0x55
    return protocol.RevealUp(shares, r.missing)


def test_a_wrong_share_is_detected_named_and_the_round_still_unmasks(seeded):
    v = vectors(7)  # complete graph: k = 6, t = 4, six shares of every secret
    out = simulate.run_round(v, tamper_reveal={3: _flip_first})  # client 3's first sender, 0, survived: a b-share
    assert out.skipped is None
    assert out.server.bad_share_clients == {3}
    assert np.abs(out.total - sum(v.values())).max() <= simulate.error_bound(7, 32)
    # a wrong share of a dropped client's mask key is caught the same way
    out = simulate.run_round(v, drop_before_masking={0}, tamper_reveal={5: _flip_first})  # 0 dropped: an s-share
    assert out.server.bad_share_clients == {5}
    assert np.abs(out.total - sum(v[c] for c in v if c)).max() <= simulate.error_bound(6, 32)


def test_the_servers_view_of_one_upload_is_uniform(seeded):
    """Chi-square of the masked words' bytes against uniform, next to the unmasked encoding."""
    from scipy.stats import chisquare

    d = 4096
    v = {c: np.full(d, 0.25) for c in range(5)}  # the most regular input there is
    captured = {}
    real_mask = protocol.ClientSession.mask

    def spy(self, rnd, msg, x, f, bits=64):
        y, clipped = real_mask(self, rnd, msg, x, f, bits)
        captured.setdefault(self.state["secagg"]["cid"], y.copy())
        return y, clipped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol.ClientSession, "mask", spy)
        out = simulate.run_round(v)
    assert out.skipped is None
    masked = np.frombuffer(captured[2].tobytes(), dtype=np.uint8)
    plain = np.frombuffer(crypto.encode_fixed(v[2], 32, 1e6)[0].tobytes(), dtype=np.uint8)
    p_masked = chisquare(np.bincount(masked, minlength=256)).pvalue
    p_plain = chisquare(np.bincount(plain, minlength=256)).pvalue
    assert p_masked > 0.01 and p_plain < 1e-100
    top_bits = (captured[2] >> np.uint64(56)).astype(np.int64)  # the words themselves, not only their bytes
    assert chisquare(np.bincount(top_bits, minlength=256)).pvalue > 0.01


def _client_at_unmask(seeded_state: dict) -> tuple[protocol.ClientSession, protocol.ServerRound]:
    """Run a 5-client round up to the unmasking step and return client 0's session."""
    states = {c: {} for c in range(5)}
    graph = protocol.neighbour_graph(list(range(5)), 4, 0)
    server = protocol.ServerRound(1, 0, graph, 3)
    keys = {c: protocol.ClientSession(states[c], 0).advertise(1, c, m) for c, m in server.advertise().items()}
    server.take_keys(keys)
    server.take_shares({c: protocol.ClientSession(states[c], 0).keys(1, m) for c, m in server.send_keys().items()})
    for c in range(5):
        env = protocol.Envelope(torch.zeros(0, dtype=torch.uint8), "weights", server.masking_set(c), 5)
        protocol.ClientSession(states[c], 0).mask(1, env, np.zeros(3), 32)
    seeded_state.update(states)
    return protocol.ClientSession(states[0], 0), server


def test_a_client_never_reveals_both_shares_of_a_neighbour_or_reveals_twice(seeded):
    states: dict = {}
    session, server = _client_at_unmask(states)
    sent = server.send_unmask([0, 1, 2, 3, 4])[0]
    greedy = protocol.UnmaskDown([1, 2, 3], [3], sent.senders, sent.tokens)  # 3 both alive and dropped
    with pytest.raises(protocol.ProtocolError, match="overlap"):
        session.unmask(1, greedy)
    reveal = session.unmask(1, sent)
    assert sent.survivors == [1, 2, 3, 4] and sent.dropped == [] and reveal.missing == [] and reveal.shares.shape[0] == 4
    with pytest.raises(protocol.ProtocolError):
        session.unmask(1, sent)  # a second request for the same round finds no secrets


def test_a_client_refuses_a_threshold_at_or_below_half():
    msg = protocol.AdvertiseDown([1, 2, 3, 4], 2)
    with pytest.raises(protocol.ProtocolError, match="not above half"):
        protocol.ClientSession({}, 0).advertise(1, 0, msg)


def test_a_forged_share_ciphertext_is_not_revealed(seeded):
    states: dict = {}
    session, server = _client_at_unmask(states)
    sent = server.send_unmask([0, 1, 2, 3, 4])[0]
    tokens = sent.tokens.clone()
    tokens[0, 40] ^= 1  # the server (or the network) alters neighbour senders[0]'s share for client 0
    reveal = session.unmask(1, protocol.UnmaskDown(sent.survivors, sent.dropped, sent.senders, tokens))
    assert reveal.missing == [0] and not reveal.shares[0].any() and reveal.shares[1:].any()


# --- the methods ---------------------------------------------------------------------------------

SMALL = [("rounds", 2), ("clients", 5), ("data.max_train", 400), ("data.max_test", 300), ("engine.threads", 1), ("partition.name", "iid")]
METHODS = {
    "fedavg": [("algorithm", "fedavg"), ("fedavg.weighting", "samples"), ("fedavg.local_epochs", 1)],
    "fedsgd": [("algorithm", "fedsgd"), ("fedsgd.weighting", "uniform")],
    "fedpeft": [("algorithm", "fedpeft"), ("fedpeft.method", "bias"), ("fedpeft.weighting", "samples")],
    "fedpeft-dp": [("algorithm", "fedpeft"), ("fedpeft.method", "bias"), ("fedpeft.weighting", "samples"), ("fedpeft.dp", "client"), ("fedpeft.dp_noise", 0.5)],
    # server SGD: Adam's first steps are about lr x sign(estimate), which turns a 1e-9 difference in a
    # near-zero coordinate into a full step (as any change in the order of the float sums would)
    "fedpeft-dp-sample": [("algorithm", "fedpeft"), ("fedpeft.method", "bias"), ("fedpeft.weighting", "uniform"), ("fedpeft.dp", "sample"), ("fedpeft.dp_noise", 0.8)],
    "baffle": [("algorithm", "baffle"), ("baffle.k", 20), ("baffle.weighting", "samples"), ("baffle.downlink", "replay"), ("baffle.optimizer", "sgd")],
    "baffle-fedavg": [("algorithm", "baffle"), ("baffle.k", 10), ("baffle.mode", "fedavg"), ("baffle.local_steps", 2), ("baffle.directions", "shared-all"), ("baffle.weighting", "samples")],
    "fd": [("algorithm", "fd"), ("fd.local_steps", 15)],
}


def _run(tmp_path, name, overrides):
    cfg = build_config(overrides=SMALL + overrides)
    p = prepare(cfg)
    summary = Experiment(p, tmp_path / name, progress=False).run()
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return p.algorithm, summary, rows


def _server_vector(alg) -> torch.Tensor:
    st = alg.state_dict()
    if "model" in st:
        return torch.cat([v.reshape(-1).float() for v in st["model"].values()])
    if "theta" in st:
        return st["theta"].float()
    return torch.zeros(0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_secagg_gives_the_plain_result_within_quantisation(tmp_path, method):
    plain_alg, plain, plain_rows = _run(tmp_path, "plain", METHODS[method])
    sec_alg, sec, sec_rows = _run(tmp_path, "secagg", METHODS[method] + [("secagg.protocol", "secagg+")])
    assert sec["status"] == plain["status"] == "completed"
    assert all(r["aggregated"] for r in sec_rows)
    a, b = _server_vector(plain_alg), _server_vector(sec_alg)
    assert a.shape == b.shape
    if a.numel():
        assert float((a - b).abs().max()) < 1e-4, method
        assert not torch.equal(a, torch.zeros_like(a))
    assert abs(sec["final_accuracy"] - plain["final_accuracy"]) <= 1 / 300 + 1e-12
    if method == "fedpeft-dp-sample":  # the clients' epsilons travel in the clear beside the masked sum
        assert sec_rows[-1]["dp_epsilon"] == pytest.approx(plain_rows[-1]["dp_epsilon"]) and sec_rows[-1]["dp_epsilon"] > 0
    # the ledger: the method's downlink bytes are the plain run's; the protocol's are "secagg"
    for p_row, s_row in zip(plain_rows, sec_rows):
        cats = s_row["bytes_by_category"]
        assert cats["up_secagg"] > 0 and cats["down_secagg"] > 0
        plain_down = {k: v for k, v in p_row["bytes_by_category"].items() if k.startswith("down_")}
        sec_down = {k: v for k, v in cats.items() if k.startswith("down_") and k != "down_secagg"}
        if method == "fd":  # FD's devices receive totals (two more header fields) instead of teachers
            assert sec_down.keys() == plain_down.keys() and 0 < sec_down["down_logits"] - plain_down["down_logits"] <= 40 * 5
        else:
            assert sec_down == plain_down
        assert s_row["secagg_masked_inputs"] == 5 and s_row["secagg_bad_shares"] == 0 and s_row["secagg_clipped_values"] == 0


def test_fd_devices_build_the_plain_leave_one_out_teacher():
    from featherfl.algorithms.fd import leave_one_out
    from featherfl.algorithms.fd import FDSums, TotalsDown
    from featherfl.algorithms.summation import SumStateError

    g = torch.Generator().manual_seed(0)
    m, L = 4, 5
    vec = torch.rand(m, L, L, generator=g)
    present = torch.rand(m, L, generator=g) > 0.3
    teachers, contributors = leave_one_out(vec, present)
    fd = FDSums.__new__(FDSums)
    fd.L = L
    totals = (vec * present.unsqueeze(2)).sum(0)
    holders = present.sum(0).to(torch.int32)
    for i in range(m):
        own = {"vectors": vec[i] * present[i].unsqueeze(1).float(), "present": present[i].float()}
        # the device also uploaded in round 4, which was skipped: the totals are still round 3's
        state = {FDSums.KEY: {2: own, 3: own, 4: {"vectors": torch.zeros(L, L), "present": torch.zeros(L)}}}
        got = fd.client_down(TotalsDown(totals, holders, 3, True), state)
        assert torch.allclose(got.teacher, teachers[i], atol=1e-6)
        assert torch.equal(got.contributors, contributors[i])
        assert sorted(state[FDSums.KEY]) == [3, 4]  # round 2's upload can never be needed again
    with pytest.raises(SumStateError, match="no longer holds"):
        fd.client_down(TotalsDown(totals, holders, 5, True), state)


def test_dropouts_in_a_run_are_counted_and_too_many_skip_the_round(tmp_path):
    # 10 clients: k = 9 neighbours, t = 5 shares; up to 4 of a client's neighbours may vanish
    extra = METHODS["fedavg"] + [("secagg.protocol", "secagg+"), ("clients", 10), ("engine.dropout", 0.1), ("secagg.dropout", 0.1), ("rounds", 3)]
    _, summary, rows = _run(tmp_path, "some", extra)
    assert summary["status"] == "completed"
    assert all(r["aggregated"] for r in rows)
    assert sum(r["secagg_dropped_before_masking"] for r in rows) > 0 and sum(r.get("after_exchange_dropped", 0) for r in rows) > 0
    assert all(r["secagg_masked_inputs"] == r["clients_ok"] for r in rows)
    _, summary, rows = _run(tmp_path, "many", extra[:-3] + [("clients", 6), ("secagg.dropout", 0.9), ("rounds", 2), ("engine.max_failed_rounds", 2)])
    assert summary["status"] == "completed" and summary["rounds_skipped"] == 2
    assert all("secagg:" in r["skipped"] and "fewer than the threshold" in r["skipped"] for r in rows)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([("algorithm", "fedavg"), ("fedavg.weighting", "samples"), ("fedavg.aggregation", "median")], "needs every client's own values"),
        ([("algorithm", "fedavg"), ("fedavg.weighting", "capped")], "capped needs every client's claimed count"),  # explicit: refused, not adapted
        ([("algorithm", "baffle"), ("baffle.weighting", "uniform"), ("baffle.directions", "per-client")], "per-client directions"),
        ([("algorithm", "baffle"), ("baffle.weighting", "uniform"), ("baffle.mode", "fedavg"), ("baffle.directions", "shared")], "shared-all"),
        ([("algorithm", "fedavg"), ("fedavg.weighting", "uniform"), ("clients", 2)], "at least 3"),
        ([("algorithm", "fd"), ("secagg.ring_bits", 32), ("secagg.fraction_bits", 30)], "no integer range"),
    ],
)
def test_combinations_secagg_cannot_serve_are_config_errors(overrides, message):
    cfg = build_config(overrides=SMALL + overrides + [("secagg.protocol", "secagg+")])
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)


def test_cli_refuses_robust_aggregation_with_secagg_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "featherfl", "run", "--algorithm", "fedavg", "--set", "secagg.protocol=secagg+", "--set", "fedavg.aggregation=trimmed-mean", "--set", "fedavg.weighting=uniform", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "trimmed-mean needs every client's own values" in proc.stderr


# --- hostile messages ------------------------------------------------------------------------------


def test_hostile_reveals_cannot_block_or_corrupt_the_round(seeded):
    v = vectors(11)  # complete graph: k = 10, t = 6; four hostile revealers leave enough honest shares

    def one_row_short(r):  # fewer shares than senders asked about: the whole reveal is dropped
        return protocol.RevealUp(r.shares[:-1], r.missing)

    def repeated_missing(r):  # the same position twice in missing: dropped too
        return protocol.RevealUp(r.shares, [0, 0])

    def not_a_field_element(r):  # 16 bytes of 0xff encode 2^128 - 1 >= P: a wrong share, named
        sh = r.shares.clone()
        sh[0] = 255
        return protocol.RevealUp(sh, r.missing)

    def swapped(r):  # two neighbours' shares exchanged: both wrong for their secrets, both named
        sh = r.shares.clone()
        sh[[0, 1]] = sh[[1, 0]]
        return protocol.RevealUp(sh, r.missing)

    out = simulate.run_round(v, tamper_reveal={2: one_row_short, 3: repeated_missing, 4: not_a_field_element, 5: swapped})
    assert out.skipped is None and 2 not in out.server.reveals and 3 not in out.server.reveals
    assert out.server.bad_share_clients == {4, 5}
    assert np.abs(out.total - sum(v.values())).max() <= simulate.error_bound(11, 32)


def test_low_order_or_copied_public_keys_are_rejected_at_the_server():
    graph = protocol.neighbour_graph([0, 1, 2, 3], 3, 0)
    server = protocol.ServerRound(1, 0, graph, 2)
    good = [crypto.keypair()[1] for _ in range(4)]
    k = lambda a, b: protocol.KeysUp(torch.frombuffer(bytearray(a + b + bytes(16)), dtype=torch.uint8))  # noqa: E731
    replies = {
        0: k(good[0], good[1]),
        1: k(bytes(32), good[2]),  # all-zero (low-order) point
        2: k(good[0], good[3]),  # client 0's key again
    }
    assert server.take_keys(replies) == {"secagg_keys_rejected": 2}
    assert set(server.keys) == {0}


def test_every_secagg_message_decoder_survives_mutated_bytes(seeded):
    """Random bit flips, truncation and junk on valid protocol messages: a PayloadError or a valid payload, never a crash."""
    from featherfl import wire

    session, server = _client_at_unmask({})
    msgs = [
        (protocol.keys_up_spec(), protocol.KeysUp(torch.arange(protocol.KEYS_BYTES, dtype=torch.uint8))),
        (protocol.masked_up_spec(5, 1), protocol.MaskedUp(torch.arange(5, dtype=torch.int64), [0.5])),
        (protocol.reveal_up_spec(4), session.unmask(1, server.send_unmask([0, 1, 2, 3, 4])[0])),
        (protocol.client_specs({}), server.send_unmask([0, 1, 2, 3, 4])[1]),
        (protocol.client_specs({}), protocol.AdvertiseDown([1, 2, 3], 2)),
    ]
    rng = random.Random(0)
    for specs, msg in msgs:
        data = bytearray(wire.encode(msg, 1, 0))
        for trial in range(300):
            b = bytearray(data)
            op = trial % 3
            if op == 0:
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            elif op == 1:
                b = b[: rng.randrange(len(b))]
            else:
                b += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
            try:
                wire.decode(bytes(b), specs, round=1, run=0)
            except wire.PayloadError:
                pass


def test_batched_clients_keep_batching_under_secagg(tmp_path, monkeypatch):
    """engine.vectorize=auto still trains FedAvg's clients as one computation under secagg (the protocol's
    messages one by one), and the result is the sequential secagg run's within float rounding."""
    from featherfl.algorithms import fedavg

    calls = []
    real = fedavg.WeightsClient.update_many
    monkeypatch.setattr(fedavg.WeightsClient, "update_many", lambda self, *a: calls.append(1) or real(self, *a))
    extra = METHODS["fedavg"] + [("secagg.protocol", "secagg+")]
    a_alg, a, a_rows = _run(tmp_path, "auto", extra)
    assert len(calls) == 2 and all(r["aggregated"] and not r.get("errors") for r in a_rows)
    o_alg, o, _ = _run(tmp_path, "off", extra + [("engine.vectorize", "off")])
    assert len(calls) == 2
    assert float((_server_vector(a_alg) - _server_vector(o_alg)).abs().max()) < 1e-4
    assert a["bytes_up"] == o["bytes_up"]
