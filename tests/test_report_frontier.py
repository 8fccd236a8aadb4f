"""The accuracy-per-byte frontier: which points, and which runs, ``compare`` and the demo mark."""

import json

from featherfl.report import compare, family, frontier, table_rows


def test_frontier_keeps_exactly_the_points_no_other_beats():
    pts = [
        (1.0, 0.50, "a"),
        (2.0, 0.40, "b"),  # more bytes, less accuracy than a: dominated
        (2.0, 0.70, "c"),
        (2.0, 0.60, "d"),  # same bytes as c, less accuracy: dominated
        (0.5, 0.30, "e"),  # cheapest point: always on the frontier
        (4.0, 0.70, "f"),  # as accurate as c with more bytes: dominated
        (8.0, 0.90, "g"),
        (16.0, 0.85, "h"),
    ]
    assert [p[2] for p in frontier(pts)] == ["e", "a", "c", "g"]


def test_frontier_accuracy_rises_strictly_and_ties_keep_the_first():
    pts = [(1.0, 0.5, "first"), (1.0, 0.5, "second"), (3.0, 0.5, "later"), (0.2, 0.9, "best")]
    got = frontier(pts)
    assert [p[2] for p in got] == ["best"]  # the cheapest point is also the most accurate: it alone
    got = frontier(pts[:3])
    assert [p[2] for p in got] == ["first"]
    assert frontier([]) == []


def _fake_run(folder, algorithm, points, clients=2, **extra):
    """A run folder as featherfl writes it: points = [(cumulative bytes up+down, accuracy)] per round."""
    folder.mkdir(parents=True)
    rows, prev = [], 0
    for i, (cum, acc) in enumerate(points, 1):
        rows.append({"round": i, "accuracy": acc, "bytes_up": (cum - prev) // 2, "bytes_down": cum - prev - (cum - prev) // 2, "cumulative_bytes_up": cum // 2, "cumulative_bytes_down": cum - cum // 2})
        prev = cum
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"algorithm": algorithm, "dataset": "digits", "clients": clients, "rounds_completed": len(rows), "status": "completed", **extra}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_compare_marks_the_runs_on_the_frontier(tmp_path):
    cheap = _fake_run(tmp_path / "cheap", "fd", [(1_000, 0.6), (2_000, 0.7)])
    dense = _fake_run(tmp_path / "dense", "fedavg", [(4_000_000, 0.5), (8_000_000, 0.95)])
    # never better than dense at any budget: beaten by cheap early, by dense late
    beaten = _fake_run(tmp_path / "beaten", "fedavg", [(10_000, 0.65), (9_000_000, 0.9)], compress="topk(ratio=0.01, ef=on)")
    rows = {r["run"]: r for r in table_rows([cheap, dense, beaten])}
    assert rows["cheap"]["frontier"] and rows["dense"]["frontier"] and not rows["beaten"]["frontier"]
    text = compare([cheap, dense, beaten], tmp_path / "cmp.png")
    line = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.split() and ln.split()[0] in rows}
    col = text.splitlines()[0].split().index("frontier")
    assert line["cheap"][col] == "yes" and line["dense"][col] == "yes" and line["beaten"][col] == "-"
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert json.loads(compare([cheap, beaten], tmp_path / "c2.png", "json"))[1]["frontier"] is True  # alone with cheap, beaten's late point wins


def test_families_follow_what_crosses_the_network():
    assert family({"algorithm": "fedavg"}) == "full model"
    assert family({"algorithm": "fedavg", "compress": "qsgd(bits=4)"}) == "compressed update"
    assert family({"algorithm": "baffle", "trainable_parameters": 970, "total_parameters": 450730}) == "PEFT subset"
    assert family({"algorithm": "baffle", "trainable_parameters": 100, "total_parameters": 100}) == "forward-only (BAFFLE)"
    assert family({"algorithm": "fd"}) == "distillation (FD)"
