"""Command line: ``featherfl run | report | compare | export | config-doc | demo | reproduce | pretrain``.

User errors (config, data, checkpoints) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from featherfl.config import ConfigError, parse_set_args
from featherfl.schema import build_config

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention too)
        print(f"featherfl: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _names() -> tuple[str, str, str]:
    """The registered algorithms, data sets and models, for ``run --help`` (read from the registries,
    so a method added in one place shows here too)."""
    from featherfl import algorithms
    from featherfl.data.sources import source_names
    from featherfl.models import model_names

    return ", ".join(algorithms.names()), ", ".join(n for n in source_names() if not n.startswith("python-")), ", ".join(n for n in model_names() if not n.startswith("python-"))


PLUGIN = "or a plug-in as module:attribute, importable from the current folder or PYTHONPATH (docs/python.md)"


def _parser(help_requested: bool = True) -> argparse.ArgumentParser:
    """``help_requested=False`` skips reading the registries (torch imports) when no help will print."""
    p = _Parser(prog="featherfl", description="Communication-light federated learning, measured in real bytes.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    algs, data, models = _names() if help_requested else ("...", "...", "...")
    r = sub.add_parser("run", help="run one experiment (default: FedAvg on digits)", description="Run one experiment and write its run folder. Every config key: `featherfl config-doc` (or docs/config.md).")
    r.add_argument("config", nargs="?", help="TOML config file (keys as in docs/config.md; --set and the flags below override it)")
    r.add_argument("--algorithm", metavar="NAME", help=f"federated method: {algs} (default fedavg); {PLUGIN}")
    r.add_argument("--dataset", metavar="NAME", help=f"data source: {data} (default digits); {PLUGIN}")
    r.add_argument("--model", metavar="NAME", help=f"model architecture (key model.name): {models} (default mlp); {PLUGIN}")
    r.add_argument("--rounds", metavar="N", help="federated rounds (default 20); with --resume, a larger N continues a finished run")
    r.add_argument("--clients", metavar="N", help="clients the training data is split across (default 10)")
    r.add_argument("--seed", metavar="N", help="seed of every random choice: split, sampling, init, training (default 0)")
    r.add_argument("--out", help="run folder (default runs/<algorithm>-<dataset>-<timestamp>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set any config key, e.g. --set partition.alpha=0.1")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    rp = sub.add_parser("report", help="table and plots for one run folder")
    rp.add_argument("run_dir", help="a run folder (written by featherfl run)")
    rp.add_argument("--format", choices=("text", "markdown", "csv", "json"), default="text", help="output format (default text)")
    c = sub.add_parser("compare", help="one table and one accuracy-vs-MB plot across runs, with the accuracy-per-byte frontier (runs on it marked)")
    c.add_argument("run_dirs", nargs="+", help="run folders (a demo folder's runs are its sub-folders)")
    c.add_argument("--out", help="plot path (default accuracy_vs_megabytes.png)")
    c.add_argument("--format", choices=("text", "markdown", "csv", "json"), default="text", help="output format (default text)")
    ex = sub.add_parser("export", help="write a run's final model as model.safetensors + config.json (FedPEFT LoRA: also peft's adapter files)")
    ex.add_argument("run_dir", help="a run folder (written by featherfl run)")
    ex.add_argument("--out", required=True, help="a new or empty folder for the model files")
    cd = sub.add_parser("config-doc", help="print the config reference (markdown)")
    cd.add_argument("--algorithm", metavar="NAME", help=f"only this method's keys (a registered name or a module:Class plug-in); default: every key")
    d = sub.add_parser("demo", help="every method on the same digits split: one table, one accuracy-vs-MB plot")
    d.add_argument("--quick", action="store_true", help="fewer rounds (under a minute)")
    d.add_argument("--out", help="demo folder (default runs/demo-<timestamp>)")
    d.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    d.add_argument("--only", action="append", help="run only this method label (repeatable)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    rr = sub.add_parser("reproduce", help="a paper's headline result on its own protocol: table of paper vs ours")
    from featherfl.reproduce import names_help

    rr.add_argument("name", help=names_help())
    rr.add_argument("--quick", action="store_true", help="scaled-down run of the same code path (minutes, not comparable to the paper)")
    rr.add_argument("--out", help="output folder (default runs/reproduce-<name>-<timestamp>)")
    rr.add_argument("--data-dir", help="folder holding mnist-t10k/, sst2/, agnews/ (default ../shared/data)")
    rr.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="change one of the recipe's options (e.g. fd-table1: devices=[2,4]); the table lists it as a deviation")
    rr.add_argument("--quiet", action="store_true", help="no progress bars")
    pt = sub.add_parser("pretrain", help="pretrain the vit-tiny backbone on a source task for fedpeft")
    pt.add_argument("--dataset", default="digits", help="source data set (default digits)")
    pt.add_argument("--classes", default="0,1,2,3,4", help="source-task labels, comma separated (default 0-4)")
    pt.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    pt.add_argument("--width", type=int, default=0, help="ViT width (0 = the default 96)")
    pt.add_argument("--out", help="checkpoint path (default: the cache that fedpeft uses when model.pretrained is empty)")
    pt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data keys, e.g. --set data.dir=PATH")
    return p


def _overrides(a) -> list:
    ov = []
    for key, attr in (("algorithm", "algorithm"), ("dataset", "dataset"), ("model.name", "model"), ("rounds", "rounds"), ("clients", "clients"), ("seed", "seed")):
        v = getattr(a, attr)
        if v is not None:
            ov.append((key, v))
    ov += parse_set_args(a.set)
    return ov


def _freeze_imported() -> None:
    """Keep what the imports made (torch's several hundred thousand objects) out of the cyclic
    garbage collector's full passes, once per process: a one-round run made one such pass over
    them, 0.1 to 0.2 s of its start-up, with nothing of theirs to free (``gc.freeze``)."""
    import gc

    global _FROZEN
    if not _FROZEN:
        _FROZEN = True
        gc.freeze()


_FROZEN = False


def cmd_run(a) -> int:
    from featherfl.config import read_config_file
    from featherfl.experiment import config_for_resume, default_run_dir, run_experiment
    from featherfl.runfolder import check_out_dir

    _freeze_imported()

    if a.quiet:
        from featherfl.quiet import silence_third_party

        silence_third_party()
    overrides = _overrides(a)
    if a.resume and a.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if a.resume:
        if not a.out:
            raise ConfigError("--resume needs --out RUN_DIR")
        if a.config:
            raise ConfigError("--resume reads the run's own config.toml; drop the config file argument (change resumable keys with --set)")
        check_out_dir(Path(a.out), resume=True)
        cfg = config_for_resume(Path(a.out), overrides)
        from featherfl.api import complete_message

        done = complete_message(Path(a.out), cfg, "--rounds")
        if done:
            print(done)
            return 0
    else:
        text = read_config_file(Path(a.config)) if a.config else None
        cfg = build_config(text, overrides)
    out = Path(a.out) if a.out else default_run_dir(cfg)
    _, summary = run_experiment(cfg, out, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet, warn=lambda w: print(f"featherfl: warning: {w}", file=sys.stderr))
    acc = summary.get("final_accuracy")
    mb = (summary["bytes_up"] + summary["bytes_down"]) / 1e6
    done = f"{summary['rounds_completed']} rounds" if summary["status"] == "completed" else f"{summary['status'].upper()} after {summary['rounds_completed']} of {summary['rounds']} rounds"  # a failed run's accuracy is not a result
    line = f"{summary['algorithm']} on {summary['dataset']}: {done}, accuracy {acc:.4f}, {mb:.3f} MB total -> {out}" if acc is not None else f"{done} -> {out}"
    print(line)
    if summary["status"] != "completed":
        see = f" (see {out / 'errors.log'})" if (out / "errors.log").is_file() else ""
        print(f"featherfl: run {summary['status']}: {summary['reason']}{see}" if summary["status"] == "failed" else f"featherfl: run stopped: {summary['reason']}", file=sys.stderr)
        return 1
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same orderly stop as Ctrl-C (the checkpoint stays the last one
    written), so a process asked to end always ends, whatever library is running."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from featherfl.checks import bound_network_waits

    bound_network_waits()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _parser(help_requested=not argv or "-h" in argv or "--help" in argv)
    a = p.parse_args(argv)
    if a.command is None:
        p.print_help()
        return EXIT_USAGE
    from featherfl.runfolder import CheckpointError

    try:
        if isinstance(getattr(a, "out", None), str) and not a.out.strip():  # --out "$UNSET": never a silent default
            raise ConfigError("--out is empty (an unset shell variable?); name the folder, e.g. --out runs/mine")
        if a.command == "run":
            return cmd_run(a)
        if a.command == "report":
            from featherfl.report import report

            print(report(Path(a.run_dir), a.format))
            return 0
        if a.command == "compare":
            from featherfl.report import compare

            print(compare([Path(d) for d in a.run_dirs], Path(a.out) if a.out else None, a.format))
            return 0
        if a.command == "demo":
            from featherfl.demo import run_demo

            _, text = run_demo(Path(a.out) if a.out else None, quick=a.quick, seed=a.seed, quiet=a.quiet, only=a.only)
            print(text)
            return 0
        if a.command == "reproduce":
            from featherfl.reproduce.runner import cmd_reproduce

            print(cmd_reproduce(a.name, quick=a.quick, out=a.out, data_dir=a.data_dir, quiet=a.quiet, sets=a.sets))
            return 0
        if a.command == "pretrain":
            from featherfl.models.pretrain import cmd_pretrain

            print(cmd_pretrain(a.dataset, a.classes, a.epochs, a.width, a.out, parse_set_args(a.set)))
            return 0
        if a.command == "export":
            from featherfl.export import export_run

            out = export_run(Path(a.run_dir), Path(a.out))
            print(f"{a.run_dir} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
            return 0
        if a.command == "config-doc":
            from featherfl.schema import reference_markdown

            print(reference_markdown(a.algorithm))
            return 0
    except (ConfigError, CheckpointError) as e:
        print(f"featherfl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(f"featherfl: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; resume with --resume --out RUN_DIR", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except (Exception, SystemExit) as e:  # never a bare traceback, never exit 0 on a failure
        from featherfl.runfolder import one_line_failure

        if os.environ.get("FEATHERFL_TRACEBACK"):
            raise
        print(f"featherfl: {one_line_failure(e)}", file=sys.stderr)
        return 1
    return EXIT_USAGE


def entry() -> None:
    """The ``featherfl`` command (and ``python -m featherfl``): :func:`main`, then :func:`leave`."""
    leave(main())


def leave(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown, where that loses nothing.

    The teardown frees every object of every imported module one by one: with torch loaded that
    is about 0.1 s of a run's wall time (0.086-0.128 s in benchmarks/results/startup.md), for
    memory the operating system takes back at once. What the teardown does that matters runs here first: every
    ``atexit`` hook (logging's flush, multiprocessing's and Ray's clean-up, any tracker's), then
    stdout and stderr are flushed. Where a thread that is not a daemon still runs (the normal exit
    waits for it), a profiler or tracer watches the process (``python -m cProfile -m featherfl``
    writes its file after the command returns), or a flush fails (a closed pipe), the normal exit
    runs instead. Every file featherfl writes is closed (and fsynced) before :func:`main` returns."""
    import atexit
    import threading

    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(0 if code is None else code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
