"""Building blocks shared by the bit-plane networks.

No normalisation layers: a norm's statistics would couple positions (and,
with batch norm, images of a batch), and the coder needs every probability
to depend only on what the decoder already knows. Residual blocks start as
the identity instead (their last convolution is zero-initialised).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def activation() -> nn.Module:
    """The nonlinearity used everywhere."""
    return nn.SiLU()


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1)


def zero_init(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(drop(act(conv(act(x)) + emb)))``.

    Args:
        channels: input = output width.
        emb_dim: width of an optional conditioning vector (0 = none), added
            per channel after the first convolution, as a diffusion model
            adds its time-step embedding.
        dropout: dropout probability before the second convolution.
    """

    def __init__(self, channels: int, emb_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.act = activation()
        self.conv1 = conv3x3(channels, channels)
        self.emb = nn.Linear(emb_dim, channels) if emb_dim > 0 else None
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_init(conv3x3(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(self.act(x))
        if self.emb is not None:
            if emb is None:
                raise ValueError("this block is conditioned: pass an embedding")
            h = h + self.emb(emb)[:, :, None, None]
        return x + self.conv2(self.drop(self.act(h)))


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA-Net's adaptive kernel size: the odd number nearest log2(C)/gamma + beta/gamma."""
    k = int(abs(math.log2(channels) / gamma + beta / gamma))
    return k if k % 2 else k + 1


class ECA(nn.Module):
    """Efficient channel attention (Wang et al., CVPR 2020), masked.

    The channel descriptor is the mean over the ``valid`` positions only, so
    padding added to reach the model's size multiple does not change it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if valid is None:
            mean = x.mean(dim=(2, 3))
        else:
            v = valid.to(x.dtype)
            mean = (x * v).sum(dim=(2, 3)) / v.sum(dim=(2, 3)).clamp_min(1)
        gate = torch.sigmoid(self.conv(mean[:, None, :]))[:, 0]
        return x * gate[:, :, None, None]
