"""Run folder(s) -> tables and plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from featherfl.config import ConfigError
from featherfl.runfolder import read_jsonl


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    sp, mp = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if not mp.exists():
        raise ConfigError(f"{run_dir} is not a featherfl run folder (no metrics.jsonl)")
    metrics = read_jsonl(mp)
    summary = json.loads(sp.read_text()) if sp.exists() else {"algorithm": run_dir.name, "rounds_completed": len(metrics)}
    return summary, metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    summary, metrics = load_run(run_dir)
    pts = [m for m in metrics if m.get("accuracy") is not None]
    (run_dir / "plots").mkdir(exist_ok=True)
    if not pts:
        return []
    plt = _plt()
    out = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([m["round"] for m in pts], [m["accuracy"] for m in pts], marker=".")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{summary.get('algorithm')} on {summary.get('dataset')}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = run_dir / "plots" / "accuracy_vs_round.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([(m["cumulative_bytes_up"] + m["cumulative_bytes_down"]) / 1e6 for m in pts], [m["accuracy"] for m in pts], marker=".")
    ax.set_xlabel("cumulative MB (up + down, all clients)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = run_dir / "plots" / "accuracy_vs_mb.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    out.append(p)
    return out


COLUMNS = ["run", "algorithm", "dataset", "rounds", "final_acc", "best_acc", "MB_up/client", "MB_down/client", "bytes_vs_fedavg", "client_compute", "wall_s"]


def table_rows(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        s, m = load_run(d)
        clients = s.get("clients") or 1
        up = s.get("bytes_up", sum(r["bytes_up"] for r in m))
        down = s.get("bytes_down", sum(r["bytes_down"] for r in m))
        rows.append(
            {
                "run": Path(d).name,
                "algorithm": s.get("algorithm"),
                "dataset": s.get("dataset"),
                "rounds": s.get("rounds_completed", len(m)),
                "final_acc": s.get("final_accuracy"),
                "best_acc": s.get("best_accuracy"),
                "MB_up/client": up / clients / 1e6,
                "MB_down/client": down / clients / 1e6,
                "bytes_vs_fedavg": None,
                "client_compute": s.get("client_compute"),
                "wall_s": s.get("wall_seconds"),
                "_total": up + down,
            }
        )
    base = next((r for r in rows if r["algorithm"] == "fedavg"), None)
    for r in rows:
        if base and base["_total"]:
            r["bytes_vs_fedavg"] = r["_total"] / base["_total"]
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(rows: list[dict], fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    cells = [[_fmt(r[c]) for c in COLUMNS] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(c) for c in cells])


def client_table(run_dir: Path) -> str:
    p = Path(run_dir) / "clients.json"
    if not p.exists():
        return ""
    info = json.loads(p.read_text())
    hist = info["label_histogram"]
    lines = ["client  samples  label histogram"]
    for i, h in enumerate(hist):
        lines.append(f"{i:>6}  {sum(h):>7}  {h}")
    return "\n".join(lines)


def report(run_dir: Path, fmt: str = "text") -> str:
    plot_run(run_dir)
    text = format_table(table_rows([run_dir]), fmt)
    if fmt == "text":
        text += "\n\n" + client_table(run_dir) + f"\n\nplots: {Path(run_dir) / 'plots'}"
    return text


def compare(run_dirs: list[Path], out_png: Path | None = None, fmt: str = "text") -> str:
    rows = table_rows(run_dirs)
    out_png = Path(out_png) if out_png else Path("accuracy_vs_megabytes.png")
    plot_compare(run_dirs, out_png)
    text = format_table(rows, fmt)
    if fmt == "text":
        text += f"\n\nplot: {out_png}"
    return text


def plot_compare(run_dirs: list[Path], out_png: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for d in run_dirs:
        s, m = load_run(d)
        pts = [r for r in m if r.get("accuracy") is not None]
        n = s.get("clients") or 1
        xs = [(r["cumulative_bytes_up"] + r["cumulative_bytes_down"]) / n / 1e6 for r in pts]
        ax.plot(xs, [r["accuracy"] for r in pts], marker=".", label=s.get("label", s.get("algorithm", Path(d).name)))
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("MB per client (up + down, cumulative)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
