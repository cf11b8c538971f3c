"""Bit-plane networks: plane context, space context, entropy heads.

The latent model (SIG only) lives elsewhere; these networks take its output
as an optional ``latent`` argument.
"""
from aribbps.models.bitplane_net import BitPlaneNet, StepHead, build_nets, head_key
from aribbps.models.entropy_head import EntropyHead
from aribbps.models.plane_context import PlaneContext
from aribbps.models.space_context import SpaceContext, lattice_kernel, masked_conv_ref, masked_lattice_conv

__all__ = [
    "BitPlaneNet",
    "EntropyHead",
    "PlaneContext",
    "SpaceContext",
    "StepHead",
    "build_nets",
    "head_key",
    "lattice_kernel",
    "masked_conv_ref",
    "masked_lattice_conv",
]
