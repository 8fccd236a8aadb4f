"""Compressed FedAvg on the byte ledger, beside featherfl's other methods, and the accuracy-per-byte frontier.

Every row is a `featherfl run` (10 clients, Dirichlet 0.5, the default MLP); the uplink is the
ledger's count of encoded bytes. The frontier table gives, for each uplink budget per client, the
best test accuracy any evaluated round of any row reached while its cumulative uplink per client
was within the budget, and which row and round that was.

    .venv/bin/python benchmarks/compression.py --out benchmarks/results/compression.md
    .venv/bin/python benchmarks/compression.py --dataset mnist --data-dir ../shared/data/mnist-t10k \
        --rounds 30 --out benchmarks/results/compression_mnist.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from featherfl.schema import build_config
from featherfl.experiment import run_experiment
from featherfl.report import frontier as frontier_points

COMPRESSED = {
    "FedAvg dense": [],
    "topk 10 % + EF": [("compress.method", "topk"), ("compress.ratio", 0.1)],
    "topk 10 %, no EF": [("compress.method", "topk"), ("compress.ratio", 0.1), ("compress.error_feedback", "off")],
    "topk 1 % + EF": [("compress.method", "topk"), ("compress.ratio", 0.01)],
    "topk 1 %, no EF": [("compress.method", "topk"), ("compress.ratio", 0.01), ("compress.error_feedback", "off")],
    "topk 0.1 % + EF": [("compress.method", "topk"), ("compress.ratio", 0.001)],
    "topk 0.1 %, no EF": [("compress.method", "topk"), ("compress.ratio", 0.001), ("compress.error_feedback", "off")],
    "randk 1 % (unbiased)": [("compress.method", "randk"), ("compress.ratio", 0.01)],
    "randk 1 % + EF": [("compress.method", "randk"), ("compress.ratio", 0.01), ("compress.error_feedback", "on")],
    "qsgd 8 bits": [("compress.method", "qsgd"), ("compress.bits", 8)],
    "qsgd 4 bits": [("compress.method", "qsgd"), ("compress.bits", 4)],
    "qsgd 2 bits": [("compress.method", "qsgd"), ("compress.bits", 2)],
    "sign + EF": [("compress.method", "sign")],
    "powersgd rank 1 + EF": [("compress.method", "powersgd"), ("compress.rank", 1)],
    "powersgd rank 4 + EF": [("compress.method", "powersgd"), ("compress.rank", 4)],
}
OTHERS = {
    "BAFFLE": [("algorithm", "baffle")],
    "FD": [("algorithm", "fd")],
    "FD+FAug": [("algorithm", "fd"), ("faug.enabled", True), ("faug.gan_steps", 300)],
    "FedPEFT head (shipped MNIST backbone)": [("algorithm", "fedpeft"), ("fedpeft.method", "head"), ("model.pretrained", "featherfl:vit-tiny-mnist")],
    "FedPEFT bias (shipped MNIST backbone)": [("algorithm", "fedpeft"), ("fedpeft.method", "bias"), ("model.pretrained", "featherfl:vit-tiny-mnist")],
}
#: Rows that need 1 x 8 x 8 inputs (the shipped backbone): digits only.
DIGITS_ONLY = ("FedPEFT head (shipped MNIST backbone)", "FedPEFT bias (shipped MNIST backbone)")
BUDGETS = [(10e3, "10 KB"), (100e3, "100 KB"), (1e6, "1 MB"), (10e6, "10 MB")]
#: Share of the training rows held out to choose learning rates (stratified); the test split is never read for a choice.
VALIDATION = 0.2
VALIDATION_SEED = 0
#: ``--tune``: the client learning rates tried per row, on the validation split (dense FedAvg and
#: the compressors whose error or variance changes the effective step).
LR_GRID = (0.02, 0.05, 0.1)
TUNED = ("FedAvg dense", "topk 1 % + EF", "topk 0.1 % + EF", "randk 1 % (unbiased)", "qsgd 4 bits", "sign + EF", "powersgd rank 1 + EF", "powersgd rank 4 + EF")


def validation_data(base: list) -> tuple:
    """The training rows of ``base``'s dataset, split into (train_x, train_y, val_x, val_y): 80 / 20, stratified."""
    from featherfl.data.dataset import stratified_split
    from featherfl.data.sources import load_dataset

    ds = load_dataset(build_config(overrides=base))
    tr, va = stratified_split(ds.train_y.numpy(), VALIDATION, seed=VALIDATION_SEED)
    return ds.train_x[tr], ds.train_y[tr], ds.train_x[va], ds.train_y[va]


def choose_lr(name: str, sets: list, base: list, key: str, grid: tuple, data: tuple, workdir: Path) -> tuple[float, dict]:
    """The rate of ``grid`` with the best final validation accuracy (ties: the lower rate), and every score."""
    import featherfl

    scores = {}
    book = workdir / "validation" / "scores.json"  # earlier validation scores of the same settings in --workdir: reused
    known = json.loads(book.read_text()) if book.is_file() else {}
    for lr in grid:
        cfg = {k: v for k, v in [*base, ("name", f"{name} validation"), *sets, (key, lr)] if k not in ("dataset", "data.dir")}
        ident = json.dumps([base, sets, key, lr, [len(t) for t in data]], default=str)
        if ident in known:
            scores[lr], status = known[ident], "reused"
        else:
            out = workdir / "validation" / f"{_slug(name)}-lr{lr:g}"
            r = featherfl.run(cfg, out=out, dataset=data, overwrite=True)
            # a rate that diverges (the run fails: every reply out of range) scores as untrainable, it is not an error
            scores[lr], status = (r.final_accuracy if r.status == "completed" and r.final_accuracy is not None else None), r.status
            known[ident] = scores[lr]
            book.write_text(json.dumps(known, indent=1))
        print(f"  validation {name:26s} {key}={lr:g}: {'diverged' if scores[lr] is None else f'{scores[lr]:.4f}'} ({status})", file=sys.stderr, flush=True)
    finite = {x: a for x, a in scores.items() if a is not None}
    if not finite:
        raise SystemExit(f"validation: no rate of {grid} trains {name}")
    best = max(finite.values())
    return min(lr for lr, a in finite.items() if a == best), scores


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("%", "pct").replace("/", "_").replace("(", "").replace(")", "").replace(",", "")


def run(name: str, sets: list, base: list, workdir: Path) -> dict:
    cfg = build_config(overrides=[*base, ("name", name), *sets])
    t = time.perf_counter()
    out = workdir / name.replace(" ", "_").replace("%", "pct").replace("/", "_")  # names of earlier work folders, kept so they are reused
    done = out / "summary.json"
    if done.exists() and json.loads(done.read_text()).get("status") == "completed" and build_config((out / "config.toml").read_text()).as_flat() == cfg.as_flat():
        summary = json.loads(done.read_text())  # a finished run of this exact config in --workdir: reused
    else:
        out, summary = run_experiment(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    n = cfg["clients"]
    curve = [(r["round"], r["cumulative_bytes_up"] / n, r["accuracy"]) for r in rows if r["accuracy"] is not None]
    return {
        "name": name,
        "sets": " ".join(f"{k}={v}" for k, v in sets) or "(defaults)",
        "final": summary["final_accuracy"],
        "best": summary["best_accuracy"],
        "up": summary["mb_up_per_client"],
        "down": summary["mb_down_per_client"],
        "rejected": summary["clients_rejected"],
        "seconds": summary["wall_seconds"],
        "curve": curve,
    }


def frontier(results: list[dict]) -> list[tuple[str, float | None, str]]:
    out = []
    for budget, label in BUDGETS:
        best = None
        for r in results:
            for rnd, up, acc in r["curve"]:
                if up <= budget and (best is None or acc > best[0]):
                    best = (acc, r["name"], rnd, up)
        out.append((label, best))
    return out


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {"FedAvg": "black", "topk": "tab:blue", "randk": "tab:cyan", "qsgd": "tab:green", "sign": "tab:red", "powersgd": "tab:purple", "BAFFLE": "tab:orange", "FD": "tab:brown", "FedPEFT": "tab:olive"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        fam = next((f for f in families if r["name"].startswith(f)), "FedAvg")
        xs = [up / 1e6 for _, up, _ in r["curve"] if up > 0]
        ys = [acc for _, up, acc in r["curve"] if up > 0]
        ax.plot(xs, ys, color=families[fam], alpha=0.8, lw=1, ls="--" if "no EF" in r["name"] else "-", label=r["name"])
    points = sorted((up / 1e6, acc) for r in results for _, up, acc in r["curve"] if up > 0)
    edge = frontier_points(points)  # the best accuracy any row reached within x MB
    env_x, env_y = [x for x, _ in edge], [y for _, y in edge]
    if env_x:
        ax.step(env_x + [points[-1][0]], env_y + [env_y[-1]], where="post", color="grey", lw=3, alpha=0.35, label="frontier (best within the budget)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink per client (MB, log)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--no-others", action="store_true", help="compression rows only")
    ap.add_argument("--out", default="benchmarks/results/compression.md")
    ap.add_argument("--tune", action="store_true", help=f"choose fedavg.lr from --lr-grid on a validation split for the rows {', '.join(TUNED)}")
    ap.add_argument("--lr-grid", default=",".join(f"{x:g}" for x in LR_GRID), help="comma-separated client learning rates tried by --tune (default %(default)s)")
    ap.add_argument("--workdir", default="", help="keep the run folders here (default: a temporary folder); finished runs of the same config are reused")
    a = ap.parse_args()
    grid = tuple(float(x) for x in a.lr_grid.split(",") if x.strip())
    base = [("dataset", a.dataset), ("clients", 10), ("partition.name", "dirichlet"), ("partition.alpha", 0.5), ("rounds", a.rounds), ("seed", a.seed), ("eval.every", 1), ("log.plots", False), ("engine.threads", 1)]
    if a.data_dir:
        base.append(("data.dir", a.data_dir))
    rows = dict(COMPRESSED)
    if not a.no_others:
        rows.update(OTHERS)
    if a.dataset != "digits":
        rows = {k: v for k, v in rows.items() if k not in DIGITS_ONLY}
    if a.only:
        keep = {s.strip() for s in a.only.split(",")}
        rows = {k: v for k, v in rows.items() if k in keep}
    results, tuned = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(a.workdir) if a.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if a.tune:
            data = validation_data(base)
            for name in [n for n in TUNED if n in rows]:
                lr, scores = choose_lr(name, rows[name], base, "fedavg.lr", grid, data, workdir)
                tuned[name] = (lr, scores)
                rows[name] = [*rows[name], ("fedavg.lr", lr)]
        for name, sets in rows.items():
            r = run(name, sets, base, workdir)
            results.append(r)
            print(f"{name:28s} acc {r['final']:.4f} (best {r['best']:.4f})  up {r['up']:.4f} MB/client  {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    dense = next((r for r in results if r["name"] == "FedAvg dense"), None)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(results, png, f"{a.dataset}: 10 clients, Dirichlet 0.5, {a.rounds} rounds")
    lines = [
        f"# Compression baselines on the byte ledger: {a.dataset}",
        "",
        f"Command: `.venv/bin/python benchmarks/compression.py {' '.join(sys.argv[1:])}`",
        "",
        f"Setup: {a.dataset}, 10 clients, Dirichlet alpha 0.5, {a.rounds} rounds, every client every round, seed {a.seed}, "
        "the default MLP, FedAvg with 2 local epochs, batch 32, SGD momentum 0.9; "
        + (
            f"client learning rate chosen from {', '.join(f'{x:g}' for x in grid)} by final accuracy on a validation split "
            f"({VALIDATION:.0%} of the training rows, stratified, seed {VALIDATION_SEED}; the remaining rows train, the test split is read only "
            f"for the figures below) for {', '.join(tuned)}; the other rows keep the default 0.05 and the other methods their defaults. "
            if tuned
            else "each method's default hyperparameters (FedAvg SGD lr 0.05); no hyperparameter was tuned. "
        )
        + f"Uplink = the ledger's encoded bytes over the run, per client. One seed; measured on a {platform.machine()} CPU shared with other jobs "
        "(seconds: the rounds' wall time as the run recorded it, indicative only).",
        "",
        "| row | settings | final acc | best acc | uplink MB / client | x fewer uplink bytes than dense | downlink MB / client | rejected | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{dense['up'] / r['up']:.1f}" if dense and r["up"] else "-"
        lines.append(f"| {r['name']} | `{r['sets']}` | {r['final']:.4f} | {r['best']:.4f} | {r['up']:.4f} | {ratio} | {r['down']:.4f} | {r['rejected']} | {r['seconds']:.0f} |")
    if tuned:
        lines += ["", "Validation (final accuracy on the held-out training rows, per client learning rate; the chosen rate in bold):", ""]
        for name, (lr, scores) in tuned.items():
            shown = {x: "diverged (the run failed)" if acc is None else f"{acc:.4f}" for x, acc in scores.items()}
            lines.append(f"- {name}: " + ", ".join(f"**{x:g}: {a}**" if x == lr else f"{x:g}: {a}" for x, a in shown.items()))
        edge = [n for n, (lr, _) in tuned.items() if lr == max(grid)]
        if edge:
            lines += ["", f"At the grid's largest rate ({max(grid):g}, a larger one not tried): {', '.join(edge)}."]
    lines += [
        "",
        "## The frontier: best accuracy within an uplink budget per client",
        "",
        "Over every evaluated round of every row above (so a row counts up to the last round its cumulative uplink fits).",
        "",
        "| uplink budget / client | best accuracy | reached by | at round | its uplink MB / client |",
        "|---|---|---|---|---|",
    ]
    for label, best in frontier(results):
        if best is None:
            lines.append(f"| {label} | - | no row fits | - | - |")
        else:
            acc, name, rnd, up = best
            lines.append(f"| {label} | {acc:.4f} | {name} | {rnd} | {up / 1e6:.4f} |")
    lines += ["", f"Accuracy against cumulative uplink per client (log x), every row: `{png.name}`.", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
