"""Byzantine clients (featherfl.attacks) and robust aggregation under attack."""

import dataclasses

import pytest
import torch

from featherfl import algorithms, wire
from featherfl.algorithms.fedavg import GradientUp, WeightsDown, WeightsUp
from featherfl.attacks import Attack, attack_for, attackers
from featherfl.engines.base import run_client
from featherfl.experiment import prepare


def test_attackers_fixed_by_seed_sized_by_fraction():
    a = attackers(0, 10, 0.2)
    assert a == attackers(0, 10, 0.2) and len(a) == 2
    assert len(attackers(0, 10, 0.3)) == 3 and a <= attackers(0, 10, 0.3)  # more attackers add, never swap
    assert len(attackers(0, 7, 0.5)) == 4 and attackers(0, 10, 0.0) == frozenset()
    assert len(attackers(0, 10, 1.0)) == 10
    assert len({attackers(s, 50, 0.2) for s in range(10)}) > 5  # the seed picks who


def test_attack_kinds_transform_the_update_relative_to_the_downlink():
    ref = torch.tensor([1.0, -1.0, 0.5, 2.0])
    w = torch.tensor([2.0, -1.0, 0.0, 2.5])
    down, up = WeightsDown(ref), WeightsUp(w, 7)
    d = w - ref
    out = Attack("scale", scale=4.0).apply(1, 0, down, up)
    assert torch.allclose(out.weights, ref + 4 * d) and out.num_samples == 7
    assert torch.allclose(Attack("sign-flip", scale=3.0).apply(1, 0, down, up).weights, ref - 3 * d)
    assert torch.allclose(Attack("constant", value=-0.25).apply(1, 0, down, up).weights, ref - 0.25)
    n1 = Attack("noise", noise_std=2.0, seed=5).apply(1, 0, down, up).weights - ref
    n2 = Attack("noise", noise_std=2.0, seed=5).apply(1, 0, down, up).weights - ref
    n3 = Attack("noise", noise_std=2.0, seed=5).apply(2, 0, down, up).weights - ref
    assert torch.equal(n1, n2) and not torch.equal(n1, n3)  # seeded per round and client
    assert not torch.allclose(n1, d)


def test_attack_without_matching_downlink_field_uses_zero_reference():
    """A gradient (FedSGD), BAFFLE's K scalars or FD's logits have no counterpart downlink: flip/scale the value itself."""
    g = torch.tensor([0.5, -2.0, 1.0])
    up = GradientUp(g, 3)
    assert torch.equal(Attack("sign-flip", scale=1.0).apply(1, 0, WeightsDown(torch.ones(3)), up).gradient, -g)
    assert torch.equal(Attack("scale", scale=10.0).apply(1, 0, None, up).gradient, 10 * g)

    @dataclasses.dataclass(frozen=True)
    class Mixed(wire.Payload):
        KIND = "t.mixed"
        logits: torch.Tensor
        counts: torch.Tensor

    m = Attack("sign-flip", scale=2.0).apply(1, 0, None, Mixed(torch.ones(2, 2), torch.tensor([3, 4], dtype=torch.int32)))
    assert torch.equal(m.logits, -2 * torch.ones(2, 2)) and torch.equal(m.counts, torch.tensor([3, 4], dtype=torch.int32))


def test_run_client_applies_the_attack_only_for_attackers(cfg_factory):
    cfg = cfg_factory(clients=5, rounds=1, attack__fraction=0.4, attack__kind="sign-flip", attack__scale=2.0, fedavg__max_steps=2)
    p = prepare(cfg)
    bad = attackers(cfg["seed"], 5, 0.4)
    assert len(bad) == 2
    client = p.algorithm.make_client()
    downs = p.algorithm.configure(1, list(range(5)))
    specs = p.algorithm.uplink_specs(1, 0)
    run = p.ctx.run_id
    for cid in range(5):
        down_bytes = wire.encode(downs[cid], 1, run)
        sent = wire.decode(run_client(client, 1, down_bytes, p.client_data[cid], {}, run), specs, round=1, run=run)
        honest = client.inner.update(1, downs[cid], p.client_data[cid], {})
        ref = downs[cid].weights
        if cid in bad:
            assert attack_for(cfg, cid, 5) is not None
            assert torch.allclose(sent.weights, ref - 2.0 * (honest.weights - ref), atol=1e-5)
        else:
            assert attack_for(cfg, cid, 5) is None and torch.equal(sent.weights, honest.weights)


def _one_round_update(cfg_factory, **kw):
    cfg = cfg_factory(clients=10, rounds=1, partition__name="iid", fedavg__max_steps=4, **kw)
    p = prepare(cfg)
    from featherfl.engines.local import LocalEngine

    old = torch.cat([t.flatten() for t in p.algorithm.global_model.state_dict().values()])
    LocalEngine(cfg, p.algorithm, p.client_data, wire.Ledger(), p.ctx.run_id).run_round(1)
    new = torch.cat([t.flatten() for t in p.algorithm.global_model.state_dict().values()])
    return new - old


@pytest.mark.parametrize("kind", ["scale", "sign-flip"])
def test_robust_rules_resist_20_percent_attackers_where_mean_does_not(cfg_factory, kind):
    """Same round, same clients: the attack drags the mean far off its clean value; median and
    trimmed-mean (beta = 0.2 >= the attacker share, Yin et al. 2018) move much less off theirs."""
    attack = {"attack__fraction": 0.2, "attack__kind": kind, "attack__scale": 10.0}
    shift = {}
    for rule in ("mean", "median", "trimmed-mean"):
        clean = _one_round_update(cfg_factory, fedavg__aggregation=rule, fedavg__trim_beta=0.2)
        upd = _one_round_update(cfg_factory, fedavg__aggregation=rule, fedavg__trim_beta=0.2, **attack)
        shift[rule] = float((upd - clean).norm() / clean.norm())
    assert shift["mean"] > 1.0, shift  # the attack moves the mean by more than the whole clean update
    assert shift["median"] < 0.6 and shift["trimmed-mean"] < 0.6, shift
    assert shift["median"] < 0.25 * shift["mean"] and shift["trimmed-mean"] < 0.25 * shift["mean"], shift


SMALL = {
    "fedavg": [("fedavg.max_steps", 2)],
    "fedsgd": [("fedsgd.batch_size", 16)],
    "baffle": [("baffle.k", 4)],
    "fd": [("fd.local_steps", 3)],
    "fedpeft": [("fedpeft.max_steps", 1)],
}
CASES = [(n, k) for n in algorithms.names() for k in ("scale", "sign-flip")] + [("fedavg", "noise"), ("fedavg", "constant")]


@pytest.mark.parametrize("name,kind", CASES)
def test_every_method_survives_attacks(name, kind):
    """An attacked round never breaks the server: attacked replies are aggregated or rejected with a reason."""
    from featherfl.schema import build_config
    from featherfl.engines.local import LocalEngine

    schema = build_config(overrides=[("algorithm", name)]).schema
    over = [("algorithm", name), ("clients", 4), ("rounds", 2), ("attack.fraction", 0.5), ("attack.kind", kind)]
    over += [(k, v) for k, v in SMALL.get(name, []) if k in schema]
    cfg = build_config(overrides=over)
    p = prepare(cfg)
    eng = LocalEngine(cfg, p.algorithm, p.client_data, wire.Ledger(), p.ctx.run_id)
    clean_cfg = build_config(overrides=over + [("attack.fraction", 0.0)])
    clean = prepare(clean_cfg)
    clean_eng = LocalEngine(clean_cfg, clean.algorithm, clean.client_data, wire.Ledger(), clean.ctx.run_id)
    for rnd in (1, 2):
        s = eng.run_round(rnd)
        clean_eng.run_round(rnd)
        assert s.clients_ok + s.clients_rejected == 4, (s.rejected_reasons, s.dropped_reasons)
        assert s.clients_dropped == 0
    attacked, honest = _tensors(p.algorithm.state_dict()), _tensors(clean.algorithm.state_dict())
    assert all(torch.isfinite(t).all() for t in attacked)
    # the attack reached the server: what it keeps differs from the clean run's (or replies were rejected)
    assert s.clients_rejected > 0 or any(not torch.equal(a, h) for a, h in zip(attacked, honest))


def _tensors(state) -> list:
    if isinstance(state, torch.Tensor):
        return [state.float()] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in _tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


def test_the_production_client_path_holds_no_attack_code():
    """Attacks wrap a client half (featherfl.attacks.AttackingClient); engines and the Flower ClientApp never import them."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "featherfl"
    for path in [*sorted((root / "engines").glob("*.py")), *sorted((root / "flower_app").glob("*.py")), *sorted((root / "algorithms").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not any("attack" in m for m in mods), f"{path.name} imports {mods}"


def test_honest_runs_get_unwrapped_clients(cfg_factory):
    from featherfl.attacks import AttackingClient

    assert not isinstance(prepare(cfg_factory(clients=3, rounds=1)).algorithm.make_client(), AttackingClient)
    assert isinstance(prepare(cfg_factory(clients=3, rounds=1, attack__fraction=0.4)).algorithm.make_client(), AttackingClient)
