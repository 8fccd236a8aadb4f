"""Compression under secure aggregation: qsgd with a shared scale and randk with shared indices
compose (the masked sum is the sum of the compressed updates); topk, sign and powersgd are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from featherfl.assembly import build_client  # noqa: E402
from featherfl.compress.codecs import Codec  # noqa: E402
from featherfl.compress.summed import CELLS, GRID_LOW, cell, next_scale  # noqa: E402
from featherfl.config import ConfigError  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from featherfl.schema import build_config  # noqa: E402

BASE = [("rounds", 1), ("clients", 5), ("data.max_train", 400), ("data.max_test", 200), ("engine.threads", 1), ("engine.vectorize", "off"), ("partition.name", "iid"), ("algorithm", "fedavg"), ("fedavg.weighting", "uniform"), ("fedavg.local_epochs", 1)]
SECAGG = [("secagg.protocol", "secagg+")]


def _model(alg) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for v in alg.state_dict()["model"].values()])


def _run_one_round(tmp_path, overrides):
    p = prepare(build_config(overrides=BASE + overrides))
    summary = Experiment(p, tmp_path / "run", progress=False).run()
    assert summary["status"] == "completed"
    return p, summary


def _replies(overrides):
    """A fresh copy of the same run: its round-1 downlinks and each client's own reply, unmasked."""
    p = prepare(build_config(overrides=BASE + overrides))
    cids = list(range(5))
    client = build_client(p.ctx)  # SecAgg's client around compression's around FedAvg's
    downs = p.algorithm.adapter.configure(1, cids)
    replies = {c: client.inner.update(1, downs[c], p.client_data[c], {}) for c in cids}
    return p, client, downs, replies


def test_qsgd_under_secagg_is_the_sum_of_levels_at_the_shared_scale(tmp_path):
    over = SECAGG + [("compress.method", "qsgd"), ("compress.bits", 4)]
    p, summary = _run_one_round(tmp_path, over)
    assert summary["secagg_words"] == "8-bit, 0 fraction bits"  # 5 clients x 7 levels: whole numbers up to 35
    masked = _model(p.algorithm)

    q, client, downs, replies = _replies(over)
    server = q.algorithm.adapter
    scales = server.round_params(1)
    assert scales == [2.0**-2] * len(scales)  # compress.shared_scale, one per layer
    total = 0
    for c, reply in replies.items():
        client.adapter.cid, client.adapter.params = c, scales
        x, _ = client.adapter.summand(1, reply, downs[c], {})
        assert np.array_equal(x, np.rint(x)) and np.abs(x[: -2 - len(scales) * CELLS]).max() <= 7  # levels in -s..s
        total = total + x
    server.finish(1, total, {}, sorted(replies))
    unmasked = _model(q.algorithm)
    assert torch.allclose(masked, unmasked, atol=1e-7)  # the masked sum is exactly the unmasked one

    # and that sum is the mean of the dequantised updates: each within one level of the true update
    start = downs[0].weights.double()
    true_mean = torch.stack([r.weights.double() - downs[c].weights.double() for c, r in replies.items()]).mean(0)
    step = max(scales) / 7
    err = (unmasked - start - true_mean).abs()
    assert float(err.max()) <= step + 1e-6 and float(err.mean()) < step / 4
    assert not torch.equal(unmasked, start)


def test_randk_under_secagg_is_plain_randk_with_indices_shared_by_every_client(tmp_path):
    over = SECAGG + [("compress.method", "randk"), ("compress.ratio", 0.1)]
    p, summary = _run_one_round(tmp_path, over)
    masked = _model(p.algorithm)
    assert summary["secagg_words"] == "32-bit, 16 fraction bits"

    q, client, downs, replies = _replies(over)
    codec = Codec(client.settings)
    layout = client.layouts({"weights": tuple(downs[0].weights.shape)})
    decoded = []
    for c, reply in replies.items():
        u = (reply.weights - downs[c].weights).numpy()
        parts, i = [], 0
        for _, shape in layout:
            n = int(np.prod(shape))
            parts.append(u[i : i + n].reshape(shape))
            i += n
        _, got = codec.encode(layout, parts, 1, -1, {})  # cid -1: the round's shared indices
        decoded.append(np.concatenate([g.reshape(-1) for g in got]))
    mean = torch.from_numpy(np.mean(decoded, axis=0)).double()
    expected = downs[0].weights.double() + mean
    # plain randk with the shared seed, within the fixed point's rounding (times n/k = 10)
    assert float((masked - expected).abs().max()) <= 10 * 2.0**-17 + 1e-6
    assert (mean != 0).float().mean() < 0.15  # only the shared ~10 % of entries moved


@pytest.mark.parametrize(
    "method,why",
    [("topk", "indices the others do not share"), ("sign", "own scale"), ("powersgd", "not linear")],
)
def test_compressors_a_sum_cannot_add_are_refused_in_one_line(method, why):
    with pytest.raises(ConfigError) as e:
        prepare(build_config(overrides=BASE + SECAGG + [("compress.method", method)]))
    text = str(e.value)
    assert text.startswith("config key 'compress.method'") and why in text and "use randk" in text and "\n" not in text


def test_a_compressed_downlink_is_refused_under_secagg():
    with pytest.raises(ConfigError, match="config key 'compress.downlink'"):
        prepare(build_config(overrides=BASE + SECAGG + [("compress.method", "qsgd"), ("compress.downlink", "same")]))


def test_the_shared_scale_follows_the_largest_client_on_a_power_of_two_grid():
    c = 2.0**-4
    assert cell(0.0, c) == 0 and cell(c, c) == GRID_LOW and cell(c * 1.01, c) == GRID_LOW + 1 and cell(c * 1e6, c) == CELLS - 1
    hist = np.zeros(CELLS)
    hist[[cell(0.001, c), cell(0.004, c)]] = [3, 2]  # five clients' largest |x|
    nxt = next_scale(c, hist)
    assert nxt >= 0.008 and nxt < 0.016  # twice the top of the highest occupied cell: nobody clipped, room to grow
    hist[:] = 0
    hist[-1] = 1  # someone far above the grid: grow by its span
    assert next_scale(c, hist) == c * 8
    assert next_scale(c, np.zeros(CELLS)) == c
