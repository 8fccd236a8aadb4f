"""Every built-in method's config section, and FAug's, declared apart from the method's code.

The run schema holds every method's keys (a saved config.toml lists them all; a key no section
declares is refused by name), but a run should import only the method it runs: a method's
module costs its import time (BAFFLE's about 0.1 s) and pulls in its own helpers. So the keys
live here, in a module that imports no method, and each method class takes its ``CONFIG`` from
here; ``featherfl.algorithms.registry.config`` hands them to the schema. A plug-in method keeps
its ``CONFIG`` on its class.
"""

from __future__ import annotations

from featherfl.algorithms.aggregate import aggregation_fields
from featherfl.algorithms.training import optimizer_fields
from featherfl.config import Field
from featherfl.models.peft_modules import METHODS
from featherfl.models.vision import ACTIVATIONS

#: BAFFLE's client precisions (``baffle_peft`` runs them)
PRECISIONS = ("fp32", "bf16", "int8")

FEDAVG: dict[str, Field] = {
    "fedavg.local_epochs": Field("int", 2, "Local epochs E per round.", min=1),
    "fedavg.batch_size": Field("int", 32, "Local mini-batch size B (0 = all local data).", min=0),
    "fedavg.max_steps": Field("int", 0, "Cap on local steps per round (0 = none).", min=0),
    **optimizer_fields("fedavg", lr=0.05, momentum=0.9),
    "fedavg.server_lr": Field("float", 1.0, "Server step on the averaged update (1.0 = plain FedAvg).", min=0.0, min_exclusive=True),
    **aggregation_fields("fedavg"),
}

FEDSGD: dict[str, Field] = {
    "fedsgd.batch_size": Field("int", 0, "Samples per client gradient (0 = all local data).", min=0),
    "fedsgd.lr": Field("float", 0.2, "Server learning rate.", min=0.0, min_exclusive=True),
    "fedsgd.optimizer": Field("str", "sgd", "Server optimizer.", choices=("sgd", "adam")),
    "fedsgd.momentum": Field("float", 0.9, "Server SGD momentum.", min=0.0, max=0.999),
    "fedsgd.weight_decay": Field("float", 0.0, "Server weight decay.", min=0.0),
    **aggregation_fields("fedsgd"),
}

BAFFLE: dict[str, Field] = {
    "baffle.k": Field("int", 100, "Random directions K per estimate (uplink: 4K bytes per step).", min=1, max=1_000_000),
    "baffle.sigma": Field("float", 1e-4, "Perturbation scale sigma (delta = sigma * eps).", min=0.0, min_exclusive=True),
    "baffle.difference": Field("str", "forward", "forward: K+1 passes; central: 2K passes, lower bias.", choices=("forward", "central")),
    "baffle.mode": Field("str", "fedsgd", "fedsgd: one estimate per client per round; fedavg: local_steps local ZO steps.", choices=("fedsgd", "fedavg")),
    "baffle.local_steps": Field("int", 10, "fedavg mode: local zeroth-order steps S per round.", min=1, max=100_000),
    "baffle.local_optimizer": Field("str", "sgd", "fedavg mode: client optimizer on each local estimate (fresh each round).", choices=("sgd", "adam")),
    "baffle.local_lr": Field("float", 0.05, "fedavg mode: client learning rate.", min=0.0, min_exclusive=True),
    "baffle.batch_size": Field("int", 0, "Samples per estimate (0 = all local data); steps walk through the data in passes.", min=0),
    "baffle.directions": Field("str", "shared", "fedsgd mode: shared: one seed set for all clients; per-client: independent seeds (fedavg mode: per client, except shared-all: one seed set per step for every client, which secagg needs).", choices=("shared", "per-client", "shared-all")),
    "baffle.downlink": Field("str", "weights", "weights: send the model; replay: send seeds + scalars to clients holding the model; pool: send the seed pool's changed coefficients (needs seed_pool).", choices=("weights", "replay", "pool")),
    "baffle.seed_pool": Field("int", 0, "Draw every direction from a pool of N seeds known to all (FedKSeed); 0 = a fresh seed per direction.", min=0, max=2**31 - 1),
    "baffle.peft": Field("bool", False, "Train fedpeft.method's subset of a pretrained backbone (model.pretrained, or vit-tiny) with forward passes; the frozen backbone never travels."),
    "baffle.client_precision": Field("str", "fp32", "Precision of the client's forward passes (the server keeps fp32): int8 = frozen Linear layers dynamically quantized (needs peft), bf16 = autocast.", choices=PRECISIONS),
    "baffle.optimizer": Field("str", "adam", "fedsgd mode: server optimizer on the estimate.", choices=("sgd", "adam")),
    "baffle.lr": Field("float", 0.03, "fedsgd mode: server learning rate.", min=0.0, min_exclusive=True),
    "baffle.momentum": Field("float", 0.0, "fedsgd mode: server SGD momentum.", min=0.0, max=0.999),
    "baffle.beta1": Field("float", 0.9, "Adam beta1 (server in fedsgd mode, clients in fedavg mode).", min=0.0, max=0.9999),
    "baffle.beta2": Field("float", 0.999, "Adam beta2 (the paper uses 0.99).", min=0.0, max=0.99999),
    "baffle.weight_decay": Field("float", 0.0, "L2 weight decay inside the optimizer that takes the estimate (the paper: 5e-4).", min=0.0),
    "baffle.server_lr": Field("float", 1.0, "fedavg mode: step toward the averaged client weights.", min=0.0, min_exclusive=True),
    "baffle.ema": Field("float", 0.0, "Decay of the EMA of server weights used for evaluation (0 = off); warm-up min(decay, (1+n)/(10+n)).", min=0.0, max=0.9999),
    "baffle.clip": Field("float", 0.0, "Rescale each estimate so its largest entry is at most this (inf-norm clipping, 0 = off).", min=0.0),
    "baffle.activation": Field("str", "hardswish", "Activation of BAFFLE's models ('model' = use model.activation).", choices=("model", *ACTIVATIONS)),
    **aggregation_fields("baffle"),
}

FD: dict[str, Field] = {
    "fd.local_steps": Field("int", 250, "Local steps n per global iteration (Alg. 1).", min=1),
    "fd.batch_size": Field("int", 32, "Local mini-batch size.", min=1),
    **optimizer_fields("fd", lr=0.05, momentum=0.9),
    "fd.gamma": Field("float", 1.0, "Weight of the distillation regulariser (0 = independent local training).", min=0.0),
    "fd.temperature": Field("float", 1.0, "Softmax temperature of the uploaded outputs and the regulariser.", min=0.0, min_exclusive=True),
    "fd.models": Field("list[str]", [], "Per-device architectures, assigned round-robin (empty = model.name)."),
    "fd.logit_noise": Field("float", 0.0, "Gaussian noise multiplier on uploaded vectors (0 = off); std = multiplier x 2 C sqrt(L).", min=0.0),
    "fd.noise_clip": Field("float", 1.0, "L2 clip C of each uploaded per-label vector when logit_noise > 0.", min=0.0, min_exclusive=True),
    "fd.noise_delta": Field("float", 1e-5, "delta of the reported (epsilon, delta) when logit_noise > 0.", min=0.0, max=1.0, min_exclusive=True),
    **aggregation_fields("fd", weighted=False),
}

FEDPEFT: dict[str, Field] = {
    "fedpeft.method": Field("str", "bias", "Which tensors train and travel (Sun et al. 2022, Sec. 3.2).", choices=METHODS),
    "fedpeft.local_epochs": Field("int", 1, "Local epochs E per round.", min=1),
    "fedpeft.batch_size": Field("int", 32, "Local mini-batch size B (0 = all local data; DP: expected Poisson batch).", min=0),
    "fedpeft.max_steps": Field("int", 0, "Cap on local steps per round (0 = none).", min=0),
    **optimizer_fields("fedpeft", lr=0.05, momentum=0.9),
    "fedpeft.server_lr": Field("float", 1.0, "Server step on the averaged update (1.0 = plain FedAvg).", min=0.0, min_exclusive=True),
    "fedpeft.adapter_reduction": Field("int", 8, "adapter: bottleneck = width / reduction.", min=1),
    "fedpeft.adapter_shared": Field("bool", False, "adapter: one adapter shared by every block."),
    "fedpeft.prompt_tokens": Field("int", 8, "prompt: learnable prompt tokens per layer.", min=1, max=256),
    "fedpeft.prompt_depth": Field("str", "deep", "prompt: deep = tokens for every layer, shallow = input only.", choices=("deep", "shallow")),
    "fedpeft.lora_rank": Field("int", 8, "lora: rank r.", min=1),
    "fedpeft.lora_alpha": Field("float", 16.0, "lora: scaling alpha (update scaled by alpha / r).", min=0.0, min_exclusive=True),
    "fedpeft.lora_targets": Field("list[str]", [], "lora: names of the linear layers to adapt ([] = qkv for vit-tiny, query+value for text)."),
    "fedpeft.cache_features": Field("bool", True, "head: compute the frozen backbone's features once per client."),
    "fedpeft.dp": Field("str", "none", "Differential privacy: none, sample (DP-SGD on clients) or client (DP-FedAvg at the server).", choices=("none", "sample", "client")),
    "fedpeft.dp_clip": Field("float", 1.0, "DP clipping norm (per example for sample, per client update for client).", min=0.0, min_exclusive=True),
    "fedpeft.dp_noise": Field("float", 1.0, "DP noise multiplier sigma (ignored when dp_target_epsilon > 0).", min=0.0),
    "fedpeft.dp_target_epsilon": Field("float", 0.0, "DP: pick sigma so epsilon after all rounds is at most this (0 = use dp_noise).", min=0.0),
    "fedpeft.dp_delta": Field("float", 1e-5, "DP delta.", min=0.0, max=1.0, min_exclusive=True),
    **aggregation_fields("fedpeft"),
}

FAUG: dict[str, Field] = {
    "faug.enabled": Field("bool", False, "Run federated augmentation as a one-time first phase around the configured method (image data)."),
    "faug.threshold": Field("float", 0.5, "A label is a target label when the device holds fewer than threshold x (its samples / labels) of it.", min=0.0, max=1.0, min_exclusive=True),
    "faug.seeds_per_label": Field("int", 5, "Seed samples uploaded per target or redundant label.", min=1, max=10_000),
    "faug.redundant_labels": Field("int", 2, "Non-target labels each device also uploads seeds of, hiding which labels are targets.", min=0),
    "faug.gan_steps": Field("int", 10000, "Most server-side conditional GAN training steps (training stops earlier once stop_recognition is reached).", min=1),
    "faug.check_every": Field("int", 500, "Check the generator's samples every this many GAN steps (0 = never: train all gan_steps).", min=0),
    "faug.stop_recognition": Field("float", 0.9, "Stop GAN training once a classifier trained on the augmented seeds labels at least this share of generated samples as their label (0 = off).", min=0.0, max=1.0),
    "faug.patience": Field("int", 0, "Also stop GAN training after this many checks in a row without a higher recognition than the best so far, and keep the best generator (0 = off: run on to gan_steps and keep the last). On digits with the default seed, where recognition stalls near 85 %, 4 cut an FD+FAug run from 339 s to 144 s (docs/methods/fd.md).", min=0),
    "faug.gan_batch": Field("int", 64, "GAN mini-batch (drawn with replacement from the augmented seeds).", min=2),
    "faug.gan_lr": Field("float", 2e-4, "Adam learning rate of the generator and the discriminator.", min=0.0, min_exclusive=True),
    "faug.noise_dim": Field("int", 100, "Generator noise dimension.", min=1),
    "faug.gen_hidden": Field("list[int]", [256, 512, 1024], "Generator hidden layer widths."),
    "faug.disc_hidden": Field("list[int]", [512, 512, 512], "Discriminator hidden layer widths."),
    "faug.aug_rotate": Field("float", 10.0, "Seed oversampling: max random rotation (degrees).", min=0.0, max=180.0),
    "faug.aug_shift": Field("float", 0.1, "Seed oversampling: max random shift (fraction of the image side).", min=0.0, max=0.5),
    "faug.aug_noise": Field("float", 0.05, "Seed oversampling: std of added pixel noise (pixels in [0, 1]).", min=0.0),
    "faug.grid_per_label": Field("int", 8, "Generated samples per label in the run folder's faug_samples.png.", min=1, max=64),
}
