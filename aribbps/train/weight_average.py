"""An exponential moving average of the trained weights (``--ema``).

The average of the last few thousand steps' weights usually codes better
than the last step's weights, whose noise the learning rate sets. The
average is what validation measures and what the exported models hold; the
optimiser keeps training the raw weights.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor


class WeightAverage:
    """``avg = d * avg + (1 - d) * w`` after every step, over ``params``.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` at step t, so
    the start (the initial weights) fades quickly. Kept in float32 on the
    parameters' device.
    """

    def __init__(self, params: Sequence[Tensor], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be in (0, 1), got {decay!r}")
        self.params = list(params)
        self.decay = decay
        self.average = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimiser step ``step`` (0-based, so resumes match)."""
        d = min(self.decay, (1 + step) / (10 + step))
        for avg, p in zip(self.average, self.params):
            avg.lerp_(p.detach().float(), 1.0 - d)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the parameters for the duration, the raw weights back afterwards."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.average):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, raw):
                    p.copy_(w)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "average": [a.cpu() for a in self.average]}

    def load_state_dict(self, state: dict) -> None:
        average = state["average"]
        if len(average) != len(self.params) or any(a.shape != p.shape for a, p in zip(average, self.params)):
            raise ValueError("the checkpoint's weight average does not fit this model")
        self.average = [a.to(p.device, torch.float32).clone() for a, p in zip(average, self.params)]
