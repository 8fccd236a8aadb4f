"""Take the trained model out of a run: ``featherfl export RUN_DIR --out DIR`` and ``load_model``.

A run folder's ``checkpoint.pt`` is the state a run needs to *continue* (optimizer
moments, client states, metrics) behind a checksum; it is not a model file. An export
is the model alone, in the formats other tools read without featherfl's internals:

- ``model.safetensors``: the final global model's ``state_dict`` (plain tensors, no pickle);
- ``config.json``: what rebuilds it (architecture name and arguments, input shape, classes),
  the featherfl version, the run's final accuracy and the resolved config;
- FedPEFT with ``method = "lora"``: also ``adapter_model.safetensors`` + ``adapter_config.json``
  written by the peft library itself, so ``PeftModel.from_pretrained(base, DIR)`` loads it;
- FD (no global model, Jeong et al. 2018): ``devices/<cid>/model.safetensors`` for every device.

The model is rebuilt by the same code that trained it (the algorithm class, from the
run's resolved config) and its state comes from the checkpoint through the run's own
reader, so an export always matches what the run evaluated (BAFFLE: the EMA weights when
``baffle.ema`` is on, as its reported accuracy is theirs).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from featherfl.config import ConfigError

FORMAT = "featherfl-model/1"


def _version() -> str:
    from featherfl.version import __version__

    return __version__


def _restore(run_dir: Path):
    """The run's algorithm with the checkpoint's state loaded, and the checkpoint itself."""
    from featherfl.config import read_config_file
    from featherfl.schema import build_config
    from featherfl.experiment import prepare
    from featherfl.runfolder import CheckpointError, load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").is_file():
        raise ConfigError(f"{run_dir} holds no checkpoint.pt; is it a run folder (not a demo or export folder)?")
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{run_dir} holds no config.toml; is it a run folder?")
    cfg = build_config(read_config_file(run_dir / "config.toml"), [("engine.device", "cpu")])  # a model comes out on the CPU
    prepared = prepare(cfg)
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    if not isinstance(ck, dict) or "algorithm" not in ck:
        raise CheckpointError(f"checkpoint {run_dir / 'checkpoint.pt'} lacks the fields of a featherfl run")
    alg = prepared.algorithm
    try:
        alg.load_state_dict(ck["algorithm"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {run_dir / 'checkpoint.pt'} does not fit this run's config ({e.__class__.__name__})") from None
    if alg.has_global_model:
        ds = prepared.dataset
        alg.evaluate(ds.test_x[:1], ds.test_y[:1])  # leaves the evaluated weights in place (BAFFLE's EMA)
    return prepared, ck


def _device_models(prepared, ck) -> dict[int, tuple[str, nn.Module]]:
    """FD: each device's own model from its client state (devices that never trained keep their seed init)."""
    from featherfl.algorithms.fd import model_for

    ctx = prepared.ctx
    out = {}
    states = ck.get("client_states", {})
    for cid in range(ctx.num_clients):
        state = states.get(cid, states.get(str(cid), {}))
        name = state.get("model_name") or model_for(ctx.cfg, cid)
        m = ctx.build_model(name).cpu()
        if "model" in state:
            m.load_state_dict(state["model"])
        out[cid] = (name, m.eval())
    return out


def _architecture(cfg, name: str | None = None) -> dict:
    return {
        "name": name or cfg["model.name"],
        "args": {"norm": cfg["model.norm"], "activation": cfg["model.activation"], "width": cfg["model.width"]},
    }


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's final model(s) into ``out`` (see the module docstring); returns ``out``."""
    from safetensors.torch import save_file

    from featherfl.runfolder import atomic_write_text, check_out_dir

    run_dir, out = Path(run_dir), Path(out)
    check_out_dir(out, fresh_only=True)  # an empty or new folder only: an export never overwrites, and has no --resume to suggest
    prepared, ck = _restore(run_dir)
    cfg, ctx, alg = prepared.cfg, prepared.ctx, prepared.algorithm
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    meta = {
        "format": FORMAT,
        "featherfl_version": _version(),
        "algorithm": cfg["algorithm"],
        "dataset": cfg["dataset"],
        "architecture": _architecture(cfg),
        "input_shape": list(ctx.input_shape),
        "num_classes": ctx.num_classes,
        "classes": list(range(ctx.num_classes)),
        "round": int(ck.get("round", 0)),
        "final_accuracy": summary.get("final_accuracy"),
        "status": summary.get("status"),
        "config": cfg.as_flat(),
        "files": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    if alg.has_global_model:
        model = getattr(alg, "global_model", None)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"algorithm {cfg['algorithm']!r} keeps no global_model to export")
        save_file(_contiguous(model.state_dict()), str(out / "model.safetensors"), metadata={"format": FORMAT})
        meta["files"].append("model.safetensors")
        if cfg["algorithm"] == "fedpeft":
            meta["peft"] = {"method": cfg["fedpeft.method"], "backbone": getattr(alg, "backbone", "")}
            if cfg["fedpeft.method"] == "lora":
                meta["files"] += _write_peft_lora(model, cfg, out)
    else:
        meta["devices"] = {}
        for cid, (name, m) in _device_models(prepared, ck).items():
            folder = out / "devices" / str(cid)
            folder.mkdir(parents=True, exist_ok=True)
            save_file(_contiguous(m.state_dict()), str(folder / "model.safetensors"), metadata={"format": FORMAT})
            meta["devices"][str(cid)] = {"architecture": _architecture(cfg, name), "file": f"devices/{cid}/model.safetensors"}
        per = summary.get("accuracy_per_client") or {}
        meta["device_accuracy"] = per
    atomic_write_text(out / "config.json", json.dumps(meta, indent=1, default=str))
    return out


# --- peft's layout -------------------------------------------------------------------------


def _write_peft_lora(model: nn.Module, cfg, out: Path) -> list[str]:
    """LoRA factors (and, on the vit-tiny, the head as ``modules_to_save``) written by peft's own
    ``save_pretrained``, so the files are exactly what ``PeftModel.from_pretrained`` expects.

    vit-tiny: the base is featherfl's ViT (``load_model(DIR, peft_base=True)``); the head is
    trained too, so it travels as a module to save. Text: the base is the Hugging Face encoder
    (``AutoModel.from_pretrained(backbone)``); the pooling head is not part of that model and
    stays in ``model.safetensors``.
    """
    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    except ImportError:
        raise ConfigError("exporting a LoRA adapter in peft's layout needs peft: pip install 'featherfl[text]'") from None
    from featherfl.data.sources import is_text

    rank, alpha = cfg["fedpeft.lora_rank"], float(cfg["fedpeft.lora_alpha"])
    if is_text(cfg):
        from featherfl.models.text import resolve_name

        targets = list(cfg["fedpeft.lora_targets"]) or ["query", "value"]
        weights = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v for k, v in model.encoder.state_dict().items() if "lora_" in k}
        base = _strip_lora(model.encoder)
        lcfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none", base_model_name_or_path=resolve_name(cfg["model.pretrained"]))
    else:
        targets = list(cfg["fedpeft.lora_targets"]) or ["qkv"]
        weights = {k.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight"): v for k, v in model.state_dict().items() if "lora_" in k}
        weights.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
        base = _strip_lora(model)
        lcfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none", modules_to_save=["head"])
    pm = get_peft_model(base, lcfg)
    result = set_peft_model_state_dict(pm, {f"base_model.model.{k}": v for k, v in weights.items()})
    if result.unexpected_keys:
        raise ConfigError(f"fedpeft lora export: peft did not place {result.unexpected_keys[:3]}")
    pm.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's blank model card says nothing about this run
    return ["adapter_model.safetensors", "adapter_config.json"]


def _strip_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA-wrapped linear layer back to the plain layer (the peft base)."""
    import copy

    from featherfl.models.peft_modules import LoRALinear

    base = copy.deepcopy(model)
    for name, m in list(base.named_modules()):
        if isinstance(m, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child, m.base)
    if any("lora_" in n for n, _ in base.named_parameters()):  # injected by peft (text encoders)
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:
            LoraLayer = ()
        for name, m in list(base.named_modules()):
            if LoraLayer and isinstance(m, LoraLayer):
                parent_name, _, child = name.rpartition(".")
                parent = base.get_submodule(parent_name) if parent_name else base
                setattr(parent, child, m.get_base_layer())
    if "peft_config" in base.__dict__:  # left by peft's injection; the base is a plain model again
        del base.peft_config
    for p in base.parameters():
        p.requires_grad_(True)
    return base


# --- loading -------------------------------------------------------------------------------


def _build_from_export(meta: dict, name: str | None = None) -> nn.Module:
    """The exported model's structure, built by the code that trained it (weights loaded after)."""
    from featherfl.algorithms.base import Context
    from featherfl.algorithms.registry import get as get_algorithm
    from featherfl.schema import build_config

    cfg = build_config(overrides=[*meta["config"].items(), ("engine.device", "cpu")])
    ctx = Context(cfg, tuple(meta["input_shape"]), int(meta["num_classes"]), int(cfg["clients"]))
    if name is not None:
        return ctx.build_model(name)
    return get_algorithm(cfg["algorithm"])(ctx).global_model


def load_model(path: str | Path, device: int | None = None, *, peft_base: bool = False) -> nn.Module | dict[int, nn.Module]:
    """The trained model of a run folder or an export folder, in ``eval()`` mode on the CPU.

    ``path`` is a run folder (read from its checksummed checkpoint) or a folder written by
    ``featherfl export``. FD has one model per device: ``device=cid`` picks one, otherwise a
    dict ``{cid: model}``. ``peft_base=True`` (FedPEFT LoRA) returns the model without its
    LoRA layers, the base that ``PeftModel.from_pretrained(base, DIR)`` wraps.
    """
    from featherfl.config import ConfigError as _CE

    path = Path(path)
    if (path / "checkpoint.pt").is_file():
        prepared, ck = _restore(path)
        alg = prepared.algorithm
        if not alg.has_global_model:
            models = {cid: m for cid, (_, m) in _device_models(prepared, ck).items()}
            return models[_device(device, models)] if device is not None else models
        model = alg.global_model.cpu().eval()
        return _strip_lora(model).eval() if peft_base else model
    if not (path / "config.json").is_file():
        raise _CE(f"{path} is neither a run folder (checkpoint.pt) nor an export (config.json)")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format") != FORMAT:
        raise _CE(f"{path / 'config.json'} is not a featherfl export (format {meta.get('format')!r})")
    from safetensors.torch import load_file

    if "devices" in meta:
        models = {}
        for cid, d in meta["devices"].items():
            if device is not None and int(cid) != device:
                continue
            m = _build_from_export(meta, d["architecture"]["name"])
            m.load_state_dict(load_file(str(path / d["file"])))
            models[int(cid)] = m.eval()
        if device is not None:
            return models[_device(device, models)]
        return models
    model = _build_from_export(meta)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model = model.cpu().eval()
    return _strip_lora(model).eval() if peft_base else model


def _device(device: int, models: dict) -> int:
    if device not in models:
        raise ConfigError(f"device {device}: the run has devices 0-{len(models) - 1}")
    return device
