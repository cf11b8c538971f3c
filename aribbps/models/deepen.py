"""Deepening a trained model: more residual blocks, the same function.

Every residual block starts as the identity (its last convolution is
zero-initialised, see :mod:`aribbps.models.layers`), so a model whose
residual stacks are made deeper computes exactly what it computed before.
Training can then go on from the trained weights with more capacity,
instead of starting a larger model from scratch. The same holds for turning
on ``split_first_step``, ``split_step_1a``, ``split_step_1a1``, ``split_step_1a1a`` or ``split_step_2``
to ``_4``: the new refinements start at a
zero correction (:mod:`aribbps.models.step_parts`).
"""
from __future__ import annotations

import torch

from aribbps.config import REFINE_FIELDS, SPLIT_FIELDS, ModelConfig
from aribbps.models.bitplane_net import BitPlaneNet, build_nets

#: The config fields that may grow; every other field (but the name) must match.
DEPTH_FIELDS = ("sig_plane_depth", "ins_plane_depth", "entropy_depth", "ins_entropy_depth")


def deepening_problem(source: ModelConfig, target: ModelConfig) -> str | None:
    """Why ``target`` is not a deepening of ``source`` (None if it is one).

    A deepening keeps every field but the name and :data:`DEPTH_FIELDS`, and
    no depth shrinks; it may also turn the splits of the lattice steps
    (:data:`aribbps.config.SPLIT_FIELDS`) on, never off, and size the
    refinements (:data:`aribbps.config.REFINE_FIELDS`) of a model that has none.
    """
    a, b = source.to_dict(), target.to_dict()
    may_change = DEPTH_FIELDS + SPLIT_FIELDS + (REFINE_FIELDS if not source.split_first_step else ())
    changed = [k for k in a if k != "name" and k not in may_change and a[k] != b[k]]
    changed += [k for k in SPLIT_FIELDS if a[k] and not b[k]]
    if changed:
        return "only the depths (" + ", ".join(DEPTH_FIELDS) + ") may change, or splits of lattice steps be " \
            "turned on, not " + ", ".join(f"{k} ({a[k]!r} -> {b[k]!r})" for k in changed)
    shrunk = [k for k in DEPTH_FIELDS if b[k] < a[k]]
    if shrunk:
        return "depths may only grow, not " + ", ".join(f"{k} ({a[k]} -> {b[k]})" for k in shrunk)
    return None


def deepen(source: ModelConfig, nets: tuple[BitPlaneNet, BitPlaneNet], target: ModelConfig,
           seed: int = 0) -> tuple[BitPlaneNet, BitPlaneNet]:
    """The nets of ``target`` holding ``nets``' weights, new blocks as identities.

    Raises:
        ValueError: ``target`` is not a deepening of ``source``.
    """
    problem = deepening_problem(source, target)
    if problem is not None:
        raise ValueError(f"cannot deepen {source.name!r} into {target.name!r}: {problem}")
    torch.manual_seed(seed)
    grown = build_nets(target)
    for old, new in zip(nets, grown):
        result = new.load_state_dict(old.state_dict(), strict=False)
        # build_nets of a deepening only adds blocks: nothing old can be left over.
        assert not result.unexpected_keys, result.unexpected_keys
        new.to(next(old.parameters()).device)
    return grown
