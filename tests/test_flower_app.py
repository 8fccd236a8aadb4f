"""Fast checks of the Flower app pieces (no processes): records, run config, the app folder."""

from pathlib import Path

import pytest

pytest.importorskip("flwr")

from featherfl import wire  # noqa: E402
from featherfl.config import ConfigError  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.engines.flower_engine import FlowerEngine
from featherfl.engines.flower_protocol import pack, unpack  # noqa: E402
from featherfl.experiment import prepare  # noqa: E402
from featherfl.flower_app import RUN_CONFIG, pyproject_text  # noqa: E402
from featherfl.flower_app.server_app import config_from_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_payload_bytes_travel_raw_and_count_the_same():
    cfg = build_config(overrides=[("clients", 2), ("data.max_train", 100)])
    p = prepare(cfg)
    down = p.algorithm.configure(1, [0])[0]
    data = wire.encode(down, 1, p.ctx.run_id)
    rd = pack(data, round=1, cid=0)
    arr = rd.array_records["payload"]["payload"]
    assert arr.stype == "featherfl.wire" and arr.data == data  # the encoded bytes themselves, no pickle
    back, scalars = unpack(rd)
    assert back == data and scalars == {"round": 1, "cid": 0}
    assert wire.decode(back, p.algorithm.make_client().downlink_specs(1), round=1, run=p.ctx.run_id).weights.equal(down.weights)


def test_run_config_maps_to_featherfl_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('algorithm = "fedsgd"\n[partition]\nalpha = 0.3\n')
    cfg = config_from_run_config({"config-file": str(f), "rounds": 3, "clients": 4, "seed": 7, "set": "partition.alpha=0.1 engine.min_replies=2"})
    assert (cfg["algorithm"], cfg["rounds"], cfg["clients"], cfg["seed"]) == ("fedsgd", 3, 4, 7)
    assert cfg["partition.alpha"] == 0.1 and cfg["engine.min_replies"] == 2 and cfg["engine.name"] == "flower"
    with pytest.raises(ConfigError, match="partition.alpha"):
        config_from_run_config({"set": "partition.alpha=-1"})
    with pytest.raises(ConfigError, match="config-file"):
        config_from_run_config({"config-file": str(tmp_path / "missing.toml")})


def test_flower_engine_outside_a_serverapp_says_how_to_start_it():
    cfg = build_config(overrides=[("clients", 2), ("engine.name", "flower"), ("data.max_train", 100)])
    p = prepare(cfg)
    with pytest.raises(ConfigError, match="flwr run"):
        FlowerEngine(cfg, p.algorithm, p.client_data, wire.Ledger(), p.ctx.run_id)


def test_committed_app_folder_is_current_and_keeps_torch_out():
    text = (ROOT / "flower" / "pyproject.toml").read_text()
    assert text == pyproject_text(), "regenerate with: .venv/bin/python -m featherfl.flower_app new <dir>"
    import tomllib

    app = tomllib.loads(text)
    assert not any("torch" in d for d in app["project"]["dependencies"])
    assert set(app["tool"]["flwr"]["app"]["config"]) == set(RUN_CONFIG)


def test_client_app_routes_every_registered_algorithm():
    from featherfl import algorithms
    from featherfl.flower_app.client_app import app

    for name in algorithms.names():
        assert f"train.{name}" in app._registered_funcs and f"evaluate.{name}" in app._registered_funcs
    assert "query.featherfl_setup" in app._registered_funcs
