"""Build everything from a config, run it round by round, write the run folder.

Everything that can fail because of the user's input (config, data, partition,
method constraints) is checked in :func:`prepare`, before the run folder is
touched, so a bad command leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch

import featherfl.checks as checks
import featherfl.wire as wire
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, Context
from featherfl.algorithms.registry import get as get_algorithm
from featherfl.assembly import build_algorithm
from featherfl.config import Config, ConfigError
from featherfl.data.partition import label_histograms, partition
from featherfl.data.population import ClientPopulation
from featherfl.data.sources import Dataset, load_dataset
from featherfl.engines import make_engine
from featherfl.engines.base import QuorumError, evaluates
from featherfl.threads import choose_threads
from featherfl.schema import build_config
from featherfl.runfolder import CheckpointError, append_jsonl, log_crash, atomic_write_text, load_checkpoint, save_checkpoint, write_jsonl

#: Keys a resumed run may change: how long it runs and how it is executed and
#: watched, never what it computes. Every other key is the run's identity: a
#: ``--resume`` that changes one is refused, naming it (docs/runs.md).
RESUMABLE_KEYS = frozenset(
    {
        "rounds",
        "eval.every",
        "eval.batch_size",
        "engine.threads",
        "engine.workers",
        "engine.parallel",
        "engine.worker_timeout",
        "engine.vectorize",
        "engine.address",
        "engine.num_cpus",
        "engine.max_failure_share",
        "engine.max_failed_rounds",
        "log.tensorboard",
        "log.mlflow_uri",
        "log.mlflow_experiment",
    }
)


def robustness_warnings(cfg: Config) -> list[str]:
    """What the configured aggregation cannot withstand of the configured ``[attack]`` (said, not hidden)."""
    from featherfl.algorithms.aggregate import Aggregator

    share, kind = cfg["attack.fraction"], cfg["attack.kind"]
    sec = cfg.section(cfg["algorithm"])
    if share <= 0 or "aggregation" not in sec:
        return []
    agg = Aggregator.from_section(sec)
    name = cfg["algorithm"]
    if kind == "inflate-count":
        if agg.rule in ("mean", "norm-clip") and agg.weighting == "samples" and not agg.max_samples:
            return [f"{name}.weighting=samples trusts claimed sample counts: {share:.0%} of clients claiming {cfg['attack.claimed_samples']:,} samples can take over the {agg.rule}; use weighting=capped or uniform"]
        return []
    if not agg.survives(share):
        limit = agg.trim_beta if agg.rule == "trimmed-mean" else 0.0
        return [f"{name}.aggregation={agg.rule} is not robust to {share:.0%} Byzantine clients (it bounds at most {limit:.0%}); expect the attack to succeed (docs/security.md)"]
    return []


def identity(cfg: Config) -> dict:
    """The resolved config without the keys a resume may change."""
    return {k: v for k, v in cfg.as_flat().items() if k not in RESUMABLE_KEYS}


def identity_changes(old: dict, new: dict) -> list[str]:
    """Identity keys whose value differs (keys a newer featherfl added are not a change)."""
    return sorted(k for k in old if k in new and old[k] != new[k])


def run_id_for(cfg: Config) -> int:
    """A 32-bit tag carried by every payload, so replies from another run are rejected."""
    return zlib.crc32(f"{cfg['seed']}|{cfg['algorithm']}|{cfg['dataset']}|{cfg['clients']}|{cfg['name']}".encode())


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['algorithm']}-{cfg['dataset']}-{stamp}"


@dataclass
class Prepared:
    cfg: Config
    dataset: Dataset
    parts: list
    part_info: dict
    ctx: Context
    algorithm: Algorithm
    client_data: ClientPopulation  # every client as an index view; tensors gathered per round


def prepare(cfg: Config) -> Prepared:
    if cfg["engine.threads"]:
        torch.set_num_threads(cfg["engine.threads"])
    alg_cls = get_algorithm(cfg["algorithm"])
    import featherfl.devices as devices
    import featherfl.secagg as secagg
    import featherfl.tracking as tracking

    cfg, chosen = secagg.adapt(cfg, alg_cls)  # defaults secure aggregation cannot use, changed and said
    alg_cls.validate(cfg)

    secagg.validate(cfg, alg_cls)

    tracking.check(cfg)
    checks.check_reachable(cfg)  # MLflow server, Ray cluster: one line within seconds, not a hang
    device = devices.resolve(cfg["engine.device"])  # a device this machine lacks: one line, exit 2
    ds, parts, info, ctx = _data_and_context(cfg)
    checks.check_setup_memory(cfg, alg_cls, ds.input_shape, ds.num_classes)  # estimates before the method allocates
    if checks.is_user_model(cfg["model.name"]):
        checks.check_model(ctx, ds.train_x)  # one forward on one batch: shapes, parameters
    client_data = ClientPopulation(ds.train_x, ds.train_y, parts, ds.num_classes, release=ds.train_pages)
    algorithm = build_algorithm(ctx)
    checks.check_client_state_memory(cfg, alg_cls, algorithm.model_parameters(), states_on_disk(cfg))
    checks.check_payload_cap(cfg, algorithm)  # a cap no reply can fit under: refused now
    ctx.info["warnings"] = chosen + robustness_warnings(cfg) + alg_cls.work_warnings(cfg)
    if cfg.ignored:
        ctx.info["warnings"].append(f"the config file sets {', '.join(cfg.ignored)}, for another method than {cfg['algorithm']}: ignored in this run")
    if device.type != "cpu" and alg_cls.runs_on_cpu_only:
        ctx.info["warnings"].append(f"{cfg['algorithm']} runs on the cpu whatever engine.device says ({device}): its clients' and server's arithmetic must agree bit for bit")
    ctx.info["device"] = str(ctx.device)
    torch.set_num_threads(choose_threads(cfg["engine.threads"], algorithm.model_parameters()))
    ctx.info["threads"] = torch.get_num_threads()
    return Prepared(cfg, ds, parts, info, ctx, algorithm, client_data)


def _data_and_context(cfg: Config) -> tuple[Dataset, list, dict, Context]:
    """The dataset, every client's partition (indices), and the run's context: what a server and
    each client derive alike from the config."""
    alg_cls = get_algorithm(cfg["algorithm"])
    ds = load_dataset(cfg)
    checks.check_population_memory(cfg, len(ds.train_y), ds.num_classes)  # before the partition allocates
    labels = ds.train_y.numpy()
    parts, info = partition(cfg, labels, ds.train_groups.numpy() if ds.train_groups is not None else None)
    info["label_histogram"] = label_histograms(labels, parts, ds.num_classes)  # (clients, classes) array
    ctx = Context(cfg, ds.input_shape, ds.num_classes, cfg["clients"], run_id_for(cfg), info=dict(info), cpu_only=alg_cls.runs_on_cpu_only)
    ctx.info["data_note"] = ds.note
    return ds, parts, info, ctx


@dataclass
class PreparedClient:
    """One client of a run, built without its server: what a deployed node holds."""

    cfg: Config
    dataset: Dataset  # its test split evaluates a method without a global model
    ctx: Context
    data: ClientData
    client: ClientHalf


def prepare_client(cfg: Config, cid: int) -> PreparedClient:
    """Client ``cid`` of the run: its partition (the one ``prepare`` gives it), its method client
    inside the features' wrappers (``featherfl.assembly.build_client``), and no server, no other
    client's tensors. Config checks are the server's job (``prepare`` ran them before any client
    was asked). Threads follow the client's own model, as ``prepare`` follows the server's."""
    from featherfl.assembly import build_client
    from featherfl.models import count_parameters

    if cfg["engine.threads"]:
        torch.set_num_threads(cfg["engine.threads"])
    if not 0 <= cid < cfg["clients"]:
        raise ConfigError(f"partition-id {cid}: expected 0 <= id < clients ({cfg['clients']})")
    ds, parts, _, ctx = _data_and_context(cfg)
    idx = torch.as_tensor(parts[cid])
    data = ClientData(cid, ds.train_x[idx], ds.train_y[idx], ds.num_classes)
    client = build_client(ctx)
    model = getattr(client, "model", None)
    torch.set_num_threads(choose_threads(cfg["engine.threads"], count_parameters(model) if isinstance(model, torch.nn.Module) else 0))
    return PreparedClient(cfg, ds, ctx, data, client)


#: Populations up to this size list every client in ``clients.json``; larger ones list the first
#: this many there and keep the whole per-client table in ``clients.npz`` (compressed arrays).
CLIENTS_LISTED = 1000


def write_clients_file(out: Path, info: dict, sizes, note: str) -> None:
    """``clients.json``: per-client label histograms and sizes, bounded at any population.

    A 10^5-client population would make a JSON list of 10^5 histograms (tens of MB, and as many
    Python objects while writing it); beyond :data:`CLIENTS_LISTED` clients the file holds a
    summary and the first clients, and ``clients.npz`` the full arrays, compressed."""
    import numpy as np

    hist = np.asarray(info["label_histogram"])
    sizes = np.asarray(sizes)
    rest = {k: v for k, v in info.items() if k != "label_histogram"}
    n = len(sizes)
    if n <= CLIENTS_LISTED:
        clients = {"label_histogram": hist.astype(int).tolist(), "samples": sizes.astype(int).tolist(), **rest, "data_note": note}
        atomic_write_text(out / "clients.json", json.dumps(clients, indent=1))
        return
    tmp = out / ".clients.npz.tmp.npz"
    np.savez_compressed(tmp, label_histogram=hist.astype(np.int32), samples=sizes.astype(np.int32))  # counts below 2^31: half the bytes to compress
    tmp.replace(out / "clients.npz")
    targets = rest.pop("target_labels", None)
    clients = {
        "clients": n,
        "clients_listed": CLIENTS_LISTED,
        "full_table": "clients.npz (arrays label_histogram [clients x classes] and samples [clients])",
        "samples_summary": {"min": int(sizes.min()), "median": float(np.median(sizes)), "mean": round(float(sizes.mean()), 3), "max": int(sizes.max()), "total": int(sizes.sum())},
        "label_totals": hist.sum(axis=0).astype(int).tolist(),
        "label_histogram": hist[:CLIENTS_LISTED].astype(int).tolist(),
        "samples": sizes[:CLIENTS_LISTED].astype(int).tolist(),
        **({"target_labels": targets[:CLIENTS_LISTED]} if targets is not None else {}),
        **rest,
        "data_note": note,
    }
    atomic_write_text(out / "clients.json", json.dumps(clients, indent=1))


#: ``engine.client_state = auto`` keeps client states on disk above this many clients.
STATES_ON_DISK_ABOVE = 1000


def states_on_disk(cfg: Config) -> bool:
    """Whether the local engine keeps client states in the run folder (``engine.client_state``)."""
    mode = cfg["engine.client_state"]
    return cfg["engine.name"] == "local" and (mode == "disk" or (mode == "auto" and cfg["clients"] > STATES_ON_DISK_ABOVE))


class Experiment:
    """One run: rounds, evaluation, metrics, checkpoints, summary and plots."""

    def __init__(self, prepared: Prepared, out: Path, resume: bool = False, progress: bool = True, on_round: Callable | None = None):
        self.p = prepared
        self.cfg = prepared.cfg
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.on_round = on_round
        self.ledger = wire.Ledger()
        self.engine = make_engine(self.cfg["engine.name"], self.cfg, prepared.algorithm, prepared.client_data, self.ledger, prepared.ctx.run_id)
        if states_on_disk(self.cfg) and hasattr(self.engine, "keep_states_on_disk"):
            self.engine.keep_states_on_disk(self.out)
        self.metrics: list[dict] = []
        self._metric_lines: list[str] = []  # each row as JSON, written once: metrics.jsonl and checkpoints
        self.start_round = 1

    # --- run folder ---------------------------------------------------------------
    def _init_folder(self, clients: bool = True) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "plots").mkdir(exist_ok=True)
        atomic_write_text(self.out / "config.toml", self.cfg.to_toml())
        if not clients:
            return
        write_clients_file(self.out, self.p.part_info, self.p.client_data.sizes(), self.p.dataset.note)

    def _restore(self) -> None:
        """Load and check the checkpoint completely before anything in the folder is rewritten."""
        ck = load_checkpoint(self.out / "checkpoint.pt")
        if not isinstance(ck, dict) or not {"run_id", "round", "algorithm", "client_states", "metrics"} <= set(ck):
            raise CheckpointError(f"checkpoint {self.out / 'checkpoint.pt'} lacks the fields of a featherfl run")
        if ck["run_id"] != self.p.ctx.run_id:
            raise ConfigError(f"{self.out}: checkpoint belongs to another run (seed/algorithm/dataset/clients differ from config.toml)")
        if "identity" in ck:
            changed = identity_changes(ck["identity"], identity(self.cfg))
            if changed:
                raise ConfigError(f"--resume: config key {changed[0]!r} differs from the run's ({ck['identity'].get(changed[0])!r} -> {identity(self.cfg).get(changed[0])!r}); only {', '.join(sorted(RESUMABLE_KEYS))} may change")
        try:
            self.p.algorithm.load_state_dict(ck["algorithm"])
            self.engine.load_client_states(ck["client_states"])
            rows = ck["metrics"]  # one JSON text (a list of rows, in older checkpoints)
            metrics = [dict(m) for m in (json.loads(rows) if isinstance(rows, str) else rows)]
            start = int(ck["round"]) + 1
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {self.out / 'checkpoint.pt'} does not fit this run ({e.__class__.__name__})") from None
        self.metrics = metrics
        self._metric_lines = [json.dumps(m) for m in metrics]
        self.start_round = start
        self._init_folder(clients=False)
        write_jsonl(self.out / "metrics.jsonl", self.metrics)

    def _checkpoint(self, rnd: int) -> None:
        save_checkpoint(
            self.out / "checkpoint.pt",
            {
                "round": rnd,
                "run_id": self.p.ctx.run_id,
                "identity": identity(self.cfg),
                "algorithm": self.p.algorithm.state_dict(),
                "client_states": self.engine.client_states(),
                # the rows as one JSON text, each row serialised once: pickling every row's nested
                # dicts again each round made checkpoints grow slower with the run
                "metrics": "[" + ",".join(self._metric_lines) + "]",
            },
        )

    # --- the loop -----------------------------------------------------------------
    def _evaluate(self) -> dict:
        ds = self.p.dataset
        alg = self.p.algorithm
        if alg.has_global_model:
            return alg.evaluate(ds.test_x, ds.test_y)
        return alg.summarize_client_eval(self.engine.evaluate_clients(ds.test_x, ds.test_y))

    def run(self) -> dict:
        """Open the folder (or restore it), run the rounds, write the summary; never lose a run:
        whatever happens, the trackers close and ``summary.json`` says how it ended."""
        from featherfl.tracking import Trackers

        trackers = Trackers(self.cfg, self.out, resume=self.resume)  # connects before anything is written
        status = "failed"
        try:
            self._open_folder()
            trackers.started()
            stopped = failed = None
            rnd = self.start_round
            bar = self._progress_bar()
            try:
                for rnd in range(self.start_round, self.cfg["rounds"] + 1):
                    stopped, failed = self._round(rnd, trackers, bar)
                    if stopped or failed:
                        break
            except (Exception, SystemExit) as e:  # anything else: status failed, errors.log, exit 1
                failed = log_crash(self.out, rnd, e)
            finally:
                if bar is not None:
                    bar.close()
                self.engine.close()
            try:  # before the summary, so a method's artifact that cannot be written fails the run
                self.p.algorithm.artifacts(self.out)
            except (Exception, SystemExit) as e:
                failed = failed or log_crash(self.out, rnd, e)
            summary = self.summary(stopped, failed)
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
            status = summary["status"]
        finally:
            trackers.close(status)
        if self.cfg["log.plots"]:
            from featherfl.report import plot_run

            plot_run(self.out)
        return summary

    def _open_folder(self) -> None:
        if self.resume:
            self._restore()
        else:
            self._init_folder()
            write_jsonl(self.out / "metrics.jsonl", [])

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        bar = tqdm(total=self.cfg["rounds"], initial=self.start_round - 1, desc=f"{self.cfg['algorithm']}", unit="round", leave=True, dynamic_ncols=True)
        self.engine.on_client = lambda r, done, n: bar.set_postfix_str(f"round {r}: client {done}/{n}")  # long rounds show life
        return bar

    def _round(self, rnd: int, trackers, bar) -> tuple[str | None, str | None]:
        """One round: run it, evaluate on schedule, write its row and checkpoint. Returns
        (why the run stops, why it failed), each None to go on."""
        t0 = time.perf_counter()
        try:
            stats = self.engine.run_round(rnd)
        except QuorumError as e:
            failed = None
            if e.stats is not None and e.stats.errors:
                self._log_errors(rnd, e.stats.errors)
                failed = self._failure(rnd, e.stats, force=True)
            return str(e), failed
        ev = self._evaluate() if evaluates(self.cfg, rnd) else {}
        row = self._row(rnd, stats, ev, t0)
        self.metrics.append(row)
        self._metric_lines.append(json.dumps(row))
        self._checkpoint(rnd)
        append_jsonl(self.out / "metrics.jsonl", row, self._metric_lines[-1])
        trackers.log(row)
        if bar is not None:
            mb = (row["cumulative_bytes_up"] + row["cumulative_bytes_down"]) / 1e6
            acc = row["accuracy"]
            bar.set_postfix_str(f"acc={acc:.3f} MB={mb:.2f}" if acc is not None else f"MB={mb:.2f}")
            bar.update(1)
        if self.on_round:
            self.on_round(row)
        if stats.errors:
            self._log_errors(rnd, stats.errors)
            failed = self._failure(rnd, stats)
            if failed:
                return None, failed
        return None, checks.failed_round(self.cfg, self.metrics)  # a round that aggregated nothing

    def _row(self, rnd: int, stats, ev: dict, t0: float) -> dict:
        """The round's metrics.jsonl row: evaluation, the ledger's bytes, who answered, the method's metrics."""
        totals = self.ledger.round_totals(rnd)
        prev = self.metrics[-1] if self.metrics else {"cumulative_bytes_up": 0, "cumulative_bytes_down": 0}
        return {
            "round": rnd,
            "accuracy": ev.get("accuracy"),
            "loss": ev.get("loss"),
            "bytes_up": totals["bytes_up"],
            "bytes_down": totals["bytes_down"],
            "cumulative_bytes_up": prev["cumulative_bytes_up"] + totals["bytes_up"],
            "cumulative_bytes_down": prev["cumulative_bytes_down"] + totals["bytes_down"],
            "clients_sampled": stats.clients_sampled,
            "clients_ok": stats.clients_ok,
            "clients_dropped": stats.clients_dropped,
            "clients_rejected": stats.clients_rejected,
            "dropped_reasons": stats.dropped_reasons,
            "rejected_reasons": stats.rejected_reasons,
            "aggregated": stats.aggregated,
            "bytes_by_category": totals["bytes_by_category"],
            "bytes_up_per_client": totals["bytes_up_per_client"],
            "bytes_down_per_client": totals["bytes_down_per_client"],
            **{k: v for k, v in ev.items() if k not in ("accuracy", "loss")},
            **_clean(stats.metrics),
            **({"errors": [{k: e[k] for k in ("cid", "type", "message")} for e in stats.errors]} if stats.errors else {}),
            "seconds": round(time.perf_counter() - t0, 4),
        }

    def _log_errors(self, rnd: int, errors: list[dict]) -> None:
        """Append each failure's full traceback to the run's ``errors.log``."""
        with open(self.out / "errors.log", "a") as f:
            for e in errors:
                f.write(f"--- round {rnd}, client {e['cid']}: {e['type']}: {e['message']}\n")
                f.write((e.get("traceback") or "(no traceback: the engine reported only the message)\n").rstrip("\n") + "\n")

    def _failure(self, rnd: int, stats, force: bool = False) -> str | None:
        """Why the run must stop because clients raised, or None.

        A round where every attempted client raised stops it; so does a run where more
        than ``engine.max_failure_share`` of all attempted client updates so far raised.
        """
        first = stats.errors[0]
        where = f"client {first['cid']} in round {rnd} raised {first['type']}: {first['message']}"
        if force or (stats.attempted and len(stats.errors) >= stats.attempted):
            return f"every attempted client failed in round {rnd}; first error: {where}"
        attempts = sum(m.get("clients_sampled", 0) - m.get("dropped_reasons", {}).get("dropout", 0) for m in self.metrics)
        failures = sum(len(m.get("errors", [])) for m in self.metrics)
        share = self.cfg["engine.max_failure_share"]
        if attempts and failures / attempts > share:
            first_ever = next(e for m in self.metrics for e in m.get("errors", []))
            where = f"client {first_ever['cid']} raised {first_ever['type']}: {first_ever['message']}"
            return f"{failures} of {attempts} client updates failed (more than engine.max_failure_share={share}); first error: {where}"
        return None

    def summary(self, stopped: str | None = None, failed: str | None = None) -> dict:
        evaluated = [m for m in self.metrics if m.get("accuracy") is not None]
        last = evaluated[-1] if evaluated else {}
        up = sum(m["bytes_up"] for m in self.metrics)
        down = sum(m["bytes_down"] for m in self.metrics)
        n = self.cfg["clients"]
        alg = self.p.algorithm
        s = {
            "algorithm": self.cfg["algorithm"],
            "dataset": self.cfg["dataset"],
            "model": self.cfg["model.name"],
            "partition": self.cfg["partition.name"],
            "clients": n,
            "rounds": self.cfg["rounds"],
            "rounds_completed": len(self.metrics),
            "final_accuracy": last.get("accuracy"),
            "final_loss": last.get("loss"),
            "best_accuracy": max((m["accuracy"] for m in evaluated), default=None),
            "bytes_up": up,
            "bytes_down": down,
            "mb_up_per_client": up / n / 1e6,
            "mb_down_per_client": down / n / 1e6,
            "model_parameters": alg.model_parameters(),
            "client_compute": alg.client_compute,
            "clients_rejected": sum(m["clients_rejected"] for m in self.metrics),
            "clients_dropped": sum(m["clients_dropped"] for m in self.metrics),
            "rounds_skipped": sum(1 for m in self.metrics if not m["aggregated"]),
            "wall_seconds": round(sum(m["seconds"] for m in self.metrics), 3),
            "data_note": self.p.dataset.note,
            "torch_threads": self.p.ctx.info.get("threads"),
            "device": self.p.ctx.info.get("device", "cpu"),
            "warnings": self.p.ctx.info.get("warnings", []),
        }
        if failed:
            s["status"], s["reason"] = "failed", failed
        elif stopped:
            s["status"], s["reason"] = "stopped", stopped
        else:
            s["status"], s["reason"] = "completed", f"{len(self.metrics)} of {self.cfg['rounds']} rounds"
        if stopped:
            s["stopped"] = stopped
        s.update(alg.summary_extra())
        return s


def _clean(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def run_experiment(
    cfg: Config,
    out: Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_round: Callable | None = None,
    prepared: Prepared | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[Path, dict]:
    """The one way a run is made, from every front door (cli, api, Flower's ServerApp, demo, reproduce):
    check the folder, prepare (unless ``prepared`` is given), run, and return the folder and its summary.

    ``warn`` receives each of the config's warnings before anything runs; ``overwrite`` clears a
    previous run's files only after the folder check and the preparation have passed, so a run
    that cannot start leaves the old folder as it was.
    """
    from featherfl.runfolder import check_out_dir, clear_run_folder

    out = Path(out) if out is not None else default_run_dir(cfg)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    prepared = prepared if prepared is not None else prepare(cfg)
    for warning in prepared.ctx.info.get("warnings", []) if warn else ():
        warn(warning)
    if overwrite:
        clear_run_folder(out)
    summary = Experiment(prepared, out, resume=resume, progress=progress, on_round=on_round).run()
    return out, summary


def config_for_resume(out: Path, overrides: list) -> Config:
    """The run's own config with the overrides a resume may apply; any other change is a ConfigError naming the key."""
    from featherfl.config import read_config_file

    p = Path(out) / "config.toml"
    if not p.is_file():
        raise ConfigError(f"--resume: no config.toml in {out}")
    text = read_config_file(p)
    before = build_config(text)
    after = build_config(text, overrides)
    changed = identity_changes(identity(before), identity(after))
    if changed:
        k = changed[0]
        raise ConfigError(f"--resume cannot change {k!r} ({before[k]!r} -> {after[k]!r}): it is part of the run's identity; only {', '.join(sorted(RESUMABLE_KEYS))} may change")
    return after
