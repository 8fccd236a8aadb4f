"""Run folder(s) -> tables and plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from featherfl.config import ConfigError


#: Fields a metrics row must have for tables and plots, with their types.
_ROW_FIELDS = {"round": int, "bytes_up": int, "bytes_down": int, "cumulative_bytes_up": int, "cumulative_bytes_down": int}


def _read_json_file(path: Path):
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """A run folder's summary and metrics rows, each checked: a corrupt, truncated or foreign file is one ConfigError line."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    sp, mp = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if not mp.exists():
        raise ConfigError(f"{run_dir} is not a featherfl run folder (no metrics.jsonl)")
    if not mp.is_file():
        raise ConfigError(f"{mp} is not a file")
    try:
        text = mp.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{mp} is not UTF-8 text") from None
    metrics = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{mp} line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or any(not isinstance(row.get(k), t) or isinstance(row.get(k), bool) for k, t in _ROW_FIELDS.items()):
            raise ConfigError(f"{mp} line {i} is not a featherfl metrics row (needs {', '.join(_ROW_FIELDS)})")
        problem = _row_problem(row)
        if problem:
            raise ConfigError(f"{mp} line {i}: {problem}; not what a featherfl run writes")
        metrics.append(row)
    summary = _read_json_file(sp) if sp.exists() else _incomplete_summary(run_dir, metrics)
    if not isinstance(summary, dict):
        raise ConfigError(f"{sp} is not a featherfl summary (not a JSON object)")
    for k in ("bytes_up", "bytes_down", "clients"):
        if k in summary and (not isinstance(summary[k], (int, float)) or isinstance(summary[k], bool) or summary[k] < 0):
            raise ConfigError(f"{sp}: {k} is not a non-negative number")
    done = summary.get("rounds_completed")
    if isinstance(done, int) and done != len(metrics):
        raise ConfigError(f"{sp} says {done} rounds completed but {mp} holds {len(metrics)}; the folder was altered or truncated")
    return summary, metrics


def _row_problem(row: dict) -> str | None:
    """What makes a metrics row impossible (NaN or out-of-range accuracy, negative bytes), or None."""
    import math

    acc = row.get("accuracy")
    if acc is not None and (not isinstance(acc, (int, float)) or isinstance(acc, bool) or not math.isfinite(acc) or not 0 <= acc <= 1):
        return f"accuracy {acc!r} is not a number in [0, 1]"
    loss = row.get("loss")
    if loss is not None and (not isinstance(loss, (int, float)) or not math.isfinite(loss)):
        return f"loss {loss!r} is not a finite number"
    negative = next((k for k in _ROW_FIELDS if row[k] < 0), None)
    if negative:
        return f"{negative} is negative ({row[negative]})"
    return None


def _incomplete_summary(run_dir: Path, metrics: list[dict]) -> dict:
    """A summary for a run that never wrote one (killed, or still running): what it is comes from
    its ``config.toml``, how far it got from ``metrics.jsonl``, and the reason names what to do."""
    import tomllib

    cfg = {}
    try:
        cfg = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        pass
    last = metrics[-1]["round"] if metrics else 0
    if (run_dir / "checkpoint.pt").is_file():
        fix = f"continue it with featherfl run --resume --out {run_dir}"
    else:
        fix = f"nothing to resume; start it again with featherfl run --overwrite --out {run_dir}"
    where = f"its last round was {last}" if last else "it finished no round"
    return {
        "algorithm": cfg.get("algorithm"),
        "dataset": cfg.get("dataset"),
        "clients": cfg.get("clients") if isinstance(cfg.get("clients"), int) and cfg.get("clients") > 0 else None,
        "rounds_completed": len(metrics),
        "status": "incomplete",
        "reason": f"no summary.json (killed, or still running); {where}; {fix}",
    }


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure():
    """A figure on the Agg canvas without pyplot's global state (half pyplot's cost per plot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_run(run_dir: Path) -> list[Path]:
    """Write the run's plots; where they cannot be written (a read-only folder, ``plots`` a file
    or a link out of the folder), say so on stderr and go on: plots never fail a run."""
    import sys

    paths, problem = write_plots(run_dir)
    if problem:
        print(f"featherfl: warning: {problem}", file=sys.stderr)
    return paths


def write_plots(run_dir: Path) -> tuple[list[Path], str | None]:
    """The plots written and, where they could not be, why (one line)."""
    run_dir = Path(run_dir)
    summary, metrics = load_run(run_dir)
    folder = run_dir / "plots"
    if folder.is_symlink():
        return [], f"plots not written: {folder} is a link, and featherfl never writes through a link out of a run folder"
    if folder.exists() and not folder.is_dir():
        return [], f"plots not written: {folder} is a file, not a folder"
    try:
        return _draw(run_dir, summary, metrics), None
    except OSError as e:
        return [], f"plots not written to {folder}: {e.strerror or e}"


def _draw(run_dir: Path, summary: dict, metrics: list[dict]) -> list[Path]:
    pts = [m for m in metrics if m.get("accuracy") is not None]
    (run_dir / "plots").mkdir(exist_ok=True)
    if not pts:
        return []
    curves = [
        ("accuracy_vs_round.png", "round", [m["round"] for m in pts], f"{summary.get('algorithm')} on {summary.get('dataset')}"),
        ("accuracy_vs_mb.png", "cumulative MB (up + down, all clients)", [(m["cumulative_bytes_up"] + m["cumulative_bytes_down"]) / 1e6 for m in pts], None),
    ]
    out = []
    for name, xlabel, xs, title in curves:
        fig, ax = _figure()
        ax.plot(xs, [m["accuracy"] for m in pts], marker=".")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)  # fixed margins: tight_layout costs a third of a short run
        p = run_dir / "plots" / name
        fig.savefig(p, dpi=110)
        out.append(p)
    return out


COLUMNS = ["run", "algorithm", "dataset", "status", "rounds", "final_acc", "best_acc", "MB_up/client", "MB_down/client", "bytes_vs_fedavg", "frontier", "client_compute", "wall_s"]


FRONTIER_NOTE = "frontier yes: some evaluated round of the run is on the accuracy-per-byte frontier (no run reached as much accuracy within as few MB per client, up + down)"


def frontier(points: list[tuple]) -> list[tuple]:
    """The accuracy-per-byte frontier of ``points`` = ``(megabytes, accuracy, ...)``: the points no
    other point beats (none reaches at least their accuracy with fewer bytes, nor more accuracy
    with as few), sorted by bytes; their accuracy rises strictly, so read as a staircase they give
    the best accuracy reachable within any byte budget. Of exact duplicates the first is kept."""
    out, best = [], None
    for p in sorted(points, key=lambda p: (p[0], -p[1])):  # stable: input order among exact ties
        if best is None or p[1] > best:
            out.append(p)
            best = p[1]
    return out


def run_points(summary: dict, metrics: list[dict]) -> list[tuple[float, float]]:
    """A run's evaluated rounds as (cumulative MB per client, up + down; accuracy): the axes of the compare plot."""
    n = summary.get("clients") or 1  # an incomplete run without config.toml: totals, not per client
    return [((r["cumulative_bytes_up"] + r["cumulative_bytes_down"]) / n / 1e6, r["accuracy"]) for r in metrics if r.get("accuracy") is not None]


#: Method families of the compare plot, each one colour: what crosses the network decides the family.
FAMILY_COLOURS = {
    "full model": "tab:blue",
    "compressed update": "tab:green",
    "forward-only (BAFFLE)": "tab:orange",
    "PEFT subset": "tab:purple",
    "distillation (FD)": "tab:brown",
    "other": "tab:gray",
}


def family(summary: dict) -> str:
    """The method family a run belongs to, from its summary: a compressed upload beats the
    algorithm's own name (FedAvg top-k is a compressed update, not a full model)."""
    algo = summary.get("algorithm")
    if summary.get("compress") and summary.get("compress") != "none":
        return "compressed update"
    if algo in ("fedavg", "fedsgd"):
        return "full model"
    if algo == "fedpeft":
        return "PEFT subset"
    if algo == "baffle":
        return "PEFT subset" if summary.get("trainable_parameters") and summary.get("trainable_parameters") < summary.get("total_parameters", 0) else "forward-only (BAFFLE)"
    if algo == "fd":
        return "distillation (FD)"
    return "other"


def table_rows(run_dirs: list[Path]) -> list[dict]:
    rows, points = [], []
    for i, d in enumerate(run_dirs):
        s, m = load_run(d)
        points += [(x, y, i) for x, y in run_points(s, m)]
        clients = s.get("clients")
        # figures from metrics.jsonl, the per-round record, never from summary.json's copies
        up = sum(r["bytes_up"] for r in m)
        down = sum(r["bytes_down"] for r in m)
        evaluated = [r["accuracy"] for r in m if r.get("accuracy") is not None]
        rows.append(
            {
                "run": Path(d).name,
                "algorithm": s.get("algorithm"),
                "dataset": s.get("dataset"),
                "status": s.get("status", "stopped" if s.get("stopped") else "completed"),
                "_reason": s.get("reason", s.get("stopped")),
                "rounds": len(m),
                "final_acc": evaluated[-1] if evaluated else None,
                "best_acc": max(evaluated) if evaluated else None,
                "MB_up/client": up / clients / 1e6 if clients else None,
                "MB_down/client": down / clients / 1e6 if clients else None,
                "bytes_vs_fedavg": None,
                "frontier": False,
                "client_compute": s.get("client_compute"),
                "wall_s": s.get("wall_seconds"),
                "_total": up + down,
            }
        )
    for _, _, i in frontier(points):
        rows[i]["frontier"] = True
    base = next((r for r in rows if r["algorithm"] == "fedavg"), None)
    for r in rows:
        if base and base["_total"]:
            r["bytes_vs_fedavg"] = r["_total"] / base["_total"]
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "-"
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
    info = _read_json_file(p)
    hist = info.get("label_histogram") if isinstance(info, dict) else None
    if not isinstance(hist, list) or not all(isinstance(h, list) and all(isinstance(v, int) for v in h) for h in hist):
        raise ConfigError(f"{p} is not a featherfl clients file (no label_histogram)")
    lines = ["client  samples  label histogram"]
    for i, h in enumerate(hist):
        lines.append(f"{i:>6}  {sum(h):>7}  {h}")
    if isinstance(info.get("clients"), int) and info["clients"] > len(hist):  # a large population: the rest is in clients.npz
        lines.append(f"... the first {len(hist):,} of {info['clients']:,} clients; all of them in {p.with_name('clients.npz')}")
    return "\n".join(lines)


def report(run_dir: Path, fmt: str = "text") -> str:
    """The run's table (always), and its plots where they can be written; otherwise the text says
    why they were not (text format) or stderr does (the other formats stay machine-readable)."""
    import sys

    rows = table_rows([run_dir])
    _, problem = write_plots(run_dir)
    text = format_table(rows, fmt)
    if fmt == "text":
        row = rows[0]
        if row["status"] != "completed" and row["_reason"]:
            text += f"\n\nrun {row['status']}: {row['_reason']}"
        text += "\n\n" + client_table(run_dir) + ("\n\n" + problem if problem else f"\n\nplots: {Path(run_dir) / 'plots'}")
    elif problem:
        print(f"featherfl: warning: {problem}", file=sys.stderr)
    return text


def compare(run_dirs: list[Path], out_png: Path | None = None, fmt: str = "text") -> str:
    out_png = Path(out_png) if out_png else Path("accuracy_vs_megabytes.png")
    check_plot_path(out_png)
    rows = table_rows(run_dirs)
    plot_compare(run_dirs, out_png)
    text = format_table(rows, fmt)
    if fmt == "text":
        text += f"\n\n{FRONTIER_NOTE}\nplot: {out_png}"
    return text


def check_plot_path(out_png: Path) -> None:
    """``compare --out``: its folder must exist and be writable, and it must not be a folder itself."""
    import os

    parent = out_png.parent if str(out_png.parent) else Path(".")
    if out_png.is_dir():
        raise ConfigError(f"--out {out_png} is a folder; give a file name such as {out_png / 'compare.png'}")
    if not parent.is_dir():
        raise ConfigError(f"--out {out_png}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {out_png}: folder {parent} is not writable")
    if out_png.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise ConfigError(f"--out {out_png}: the plot needs a .png, .pdf, .svg or .jpg name")


def plot_compare(run_dirs: list[Path], out_png: Path) -> Path:
    """Accuracy against MB per client (log x) for every run, coloured by method family, with the
    accuracy-per-byte frontier over all the runs' evaluated rounds drawn as a staircase."""
    from itertools import cycle

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles: dict[str, cycle] = {}
    every = []
    for d in run_dirs:
        s, m = load_run(d)
        pts = run_points(s, m)
        every += pts
        fam = family(s)
        style = next(styles.setdefault(fam, cycle([("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ("-", "v")])))
        ax.plot([x for x, _ in pts], [y for _, y in pts], ls=style[0], marker=style[1], ms=3, lw=1.2, color=FAMILY_COLOURS[fam], label=f"{s.get('label', Path(d).name)} ({fam})")
    edge = frontier([p for p in every if p[0] > 0])  # a log axis has no zero
    if edge:
        xs = [x for x, _ in edge] + [max(x for x, _ in every)]
        ys = [y for _, y in edge] + [edge[-1][1]]
        ax.step(xs, ys, where="post", color="black", lw=2.5, alpha=0.3, zorder=0, label="frontier: best accuracy within the MB")
    ax.set_xscale("log")
    ax.set_xlabel("MB per client (up + down, cumulative; log)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def write_sample_grid(x, y, num_classes: int, per_label: int, path: Path) -> None:
    """A picture of generated samples (FAug's ``faug_samples.png``): one row per label, ``per_label``
    images each; ``x`` (n, C, H, W) in [0, 1] in label order, ``y`` their labels."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, h, w = x.shape[1:]
    grid = torch.zeros(num_classes * (h + 1), per_label * (w + 1), c)
    for i, (img, lab) in enumerate(zip(x, y.tolist())):
        col = i % per_label
        grid[lab * (h + 1) : lab * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = img.permute(1, 2, 0)
    scale = max(1, 256 // max(grid.shape[0], grid.shape[1]))
    arr = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    if c == 1:
        plt.imsave(path, arr[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        plt.imsave(path, arr)
