"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", Alg. 2): FedAvg whose
clients minimise the local loss plus mu/2 ||w - w_global||^2. The server half is featherfl's
GlobalModelServer (send the global model, evaluate it, checkpoint it, and average under secure
aggregation), so this file holds only what the paper adds."""

import torch
import torch.nn.functional as F

from featherfl.algorithms.aggregate import aggregation_fields
from featherfl.algorithms.base import ClientHalf
from featherfl.algorithms.fedavg import GlobalModelServer, WeightsDown, WeightsUp, weights_spec
from featherfl.algorithms.training import batches, make_optimizer, optimizer_fields
from featherfl.config import Field
from featherfl.models import flat_state, load_flat_state
from featherfl.seeding import generator


class ProxClient(ClientHalf):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.model = ctx.build_model()
        self.n = flat_state(self.model).numel()
        self.opts = ctx.cfg.section("fedprox")

    def downlink_specs(self, rnd):
        return {WeightsDown.KIND: weights_spec(WeightsDown, self.n, "weights")}

    def update(self, rnd, down, data, state):
        load_flat_state(self.model, down.weights)
        anchor = [p.detach().clone() for p in self.model.parameters()]
        opt = make_optimizer(self.model.parameters(), self.opts)
        gen = generator(self.ctx.seed, "fedprox-client", rnd, data.cid)
        self.model.train()
        for _ in range(self.opts.local_epochs):
            for idx in batches(len(data), self.opts.batch_size, gen):
                opt.zero_grad()
                loss = F.cross_entropy(self.model(data.x[idx]), data.y[idx])
                prox = sum(((p - a) ** 2).sum() for p, a in zip(self.model.parameters(), anchor))
                (loss + self.opts.mu / 2 * prox).backward()
                opt.step()
        return WeightsUp(flat_state(self.model), len(data))


class FedProx(GlobalModelServer):
    name = "fedprox"
    client_class = ProxClient
    CONFIG = {
        "fedprox.mu": Field("float", 0.01, "Proximal term weight mu (0 = FedAvg).", min=0.0),
        "fedprox.local_epochs": Field("int", 2, "Local epochs per round.", min=1),
        "fedprox.batch_size": Field("int", 32, "Local mini-batch size.", min=0),
        **optimizer_fields("fedprox", lr=0.05, momentum=0.9),
        **aggregation_fields("fedprox"),
    }

    def uplink_specs(self, rnd, cid):
        return {WeightsUp.KIND: weights_spec(WeightsUp, flat_state(self.global_model).numel(), "weights", with_samples=True)}

    def aggregate(self, rnd, replies):
        cids = sorted(replies)
        stack = torch.stack([replies[c].weights for c in cids])
        claims = torch.tensor([float(replies[c].num_samples) for c in cids])
        old = flat_state(self.global_model)
        new = self.aggregator(stack, claims, reference=old)
        load_flat_state(self.global_model, new)
        return {"update_norm": float((new - old).norm())}
