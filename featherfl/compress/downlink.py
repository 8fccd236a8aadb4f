"""``compress.downlink = same``: the server-to-client weights compressed with the uplink's codec.

The server keeps a replica of what the clients hold and sends each round the compressed
difference between its model and that replica; both sides add the same decoded difference to
their replica, so the part a round did not deliver stays in (model - replica) and goes out in a
later round: the server's own error feedback (as in DoubleSqueeze, Tang et al. 2019). A client
trains from its replica; the server adds each client's update to its own model, not to the
replica, so nothing the downlink left out is lost from the model. A client that missed a round
(not sampled, dropped, rejected) gets the replica dense and is in step again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

KIND = "compress.down"


@dataclass(frozen=True)
class CompressedDown(Payload):
    KIND = KIND
    CATEGORY = "weights"
    data: torch.Tensor  # uint8: the codec's encoding of (model - replica)
    base_round: int  # the round whose replica this difference applies to


def dense_fields(p: Payload) -> dict[str, torch.Tensor] | None:
    """The payload's tensors if it is a weights downlink made of float32 tensors only, else None."""
    ts = p.tensor_fields()
    names = {f.name for f in dataclasses.fields(p)}
    if p.CATEGORY != "weights" or not ts or set(ts) != names or any(t.dtype != torch.float32 for t in ts.values()):
        return None
    return {n: t.detach().to(torch.float32).cpu() for n, t in ts.items()}


def add_decoded(replica: dict[str, torch.Tensor], layout, decoded: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """replica + decoded difference, field by field; the same arithmetic on both sides."""
    out = {}
    for name, t in replica.items():
        got = [d for (key, _), d in zip(layout, decoded) if key == name or key.startswith(name + "/")]
        out[name] = (t + torch.from_numpy(np.concatenate([d.reshape(-1) for d in got])).reshape(t.shape)).contiguous()
    return out


def down_spec(receive, dense: int, segments: int) -> Spec:
    return Spec(receive, {"data": TensorSpec("uint8", (None,), max_elems=8 * dense + 16 * segments + 64)}, {"base_round": ScalarSpec("int", 0, 2**32 - 1)})


class Broadcast:
    """The server side: the clients' replica, the round it is from, and who holds it."""

    def __init__(self, codec, layouts):
        self.codec = codec
        self.layouts = layouts
        self.replica: dict[str, torch.Tensor] | None = None
        self.round = 0
        self.holders: dict[int, int] = {}  # cid -> the round of the replica it holds
        self.q: dict = {}  # PowerSGD's Q for the server's own encoder

    def configure(self, rnd: int, downs: dict[int, Payload]) -> dict[int, Payload]:
        """What to send each client: the compressed difference, or the replica dense."""
        if not downs:
            return downs
        first = next(iter(downs.values()))
        target = dense_fields(first)
        if target is None or any(d is not first and dense_fields(d) is None for d in downs.values()):
            return downs
        prev = self.round
        if self.replica is None:
            self.replica = {n: t.clone() for n, t in target.items()}
            blob = None
        else:
            layout = self.layouts({n: tuple(t.shape) for n, t in target.items()})
            segments = []
            for name in sorted(target):
                flat = (target[name] - self.replica[name]).reshape(-1).numpy()
                i = 0
                for key, shape in layout:
                    if key == name or key.startswith(name + "/"):
                        n = int(np.prod(shape))
                        segments.append(flat[i : i + n].reshape(shape))
                        i += n
            blob, decoded = self.codec.encode(layout, segments, rnd, -1, self.q)
            self.replica = add_decoded(self.replica, layout, decoded)
        self.round = rnd
        dense = type(first)(**{n: t.clone() for n, t in self.replica.items()})
        out = {}
        for cid in downs:
            if blob is not None and self.holders.get(cid) == prev:
                out[cid] = CompressedDown(torch.frombuffer(bytearray(blob), dtype=torch.uint8), prev)
            else:
                out[cid] = dense
            self.holders.pop(cid, None)  # in step again only once its reply is accepted
        return out

    def accepted(self, cids) -> None:
        for c in cids:
            self.holders[c] = self.round

    def state_dict(self) -> dict:
        return {"replica": self.replica or {}, "round": self.round, "holders": {str(c): r for c, r in self.holders.items()}, "q": dict(self.q)}

    def load_state_dict(self, s: dict) -> None:
        self.replica = {n: t.clone() for n, t in s["replica"].items()} or None
        self.round = int(s["round"])
        self.holders = {int(c): int(r) for c, r in s["holders"].items()}
        self.q = dict(s["q"])
