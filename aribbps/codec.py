"""The bit-plane codec over lanes: where networks, bit planes and coder meet.

A *item* is one tile of one image, ``(C, h, w)`` uint8 with C = 3 (RGB) or
C = 1 (greyscale or an alpha plane: fed to the network as three equal
channels, only the R bit is coded). Items are sorted by padded area (largest
first, ties by index) and dealt to L lanes: round r holds the next n <= L
items of similar size (see :func:`plan_rounds`) on lanes ``0 .. n-1``, edge-padded to one common size (a multiple of
the model's ``pad_multiple``). Padding is never coded: the coder skips
invalid positions.

Decoder order inside a lane: round 0 first; in a round plane 1..8, in a plane
its coding stages (:func:`coding_stages`: steps 1..4, or with a model that
splits step 1 its parts first: 1a, 1b or 1a1, 1a2, 1b), in a stage its valid
positions in row-major order, R, G, B.
The encoder pushes the exact reverse. Both sides run the networks on the same
batches built from the same integers (DESIGN 2.3):

* the known image before plane k is the decoded image (planes < k) edge-padded
  to the round size; the encoder gets the same from its padded true image;
* the plane bits handed to step s are the bits of steps < s at valid
  positions and zeros elsewhere, on both sides.

Per (plane, step) the 7 quantised probabilities of every lane cross from the
device to the host once; per-lane selection of valid positions is NumPy.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter

import numpy as np
import torch
from torch import Tensor

from aribbps.bitplanes import NUM_STEPS, known_before, plane_bits, step_positions, step_view, steps_before_mask
from aribbps.coder import LaneCoder
from aribbps.lane_seal import check_lane_seals, lane_seals
from aribbps.models.bitplane_net import BitPlaneNet
from aribbps.models.step_parts import StepPart, pattern_mask
from aribbps.overlap import default_overlap, prefetched
from aribbps.prob_correction import ProbCorrection
from aribbps.probability import WRITTEN_PROB_CODE, bits_cost, probability_masses, select_probs7
from aribbps.temperature import (
    NEUTRAL_SYMBOL, SYMBOLS, TEMPERATURE_BITS, candidate_costs, choose_symbols, scaled_probs7, temperatures,
)
from kernels import dispatch

ItemShape = tuple[int, int, int]


@dataclass
class PlaneNets:
    """The two networks of a model and which planes each codes."""

    sig: BitPlaneNet
    ins: BitPlaneNet

    def net_for(self, k: int) -> BitPlaneNet:
        return self.sig if k in self.sig.planes else self.ins


@dataclass(frozen=True)
class Stage:
    """One coding pass over a plane: lattice step ``s``, or one of the parts
    a model codes a step in (:mod:`aribbps.models.step_parts`)."""

    s: int
    part: StepPart | None = None

    @property
    def refined(self) -> bool:
        """It refines the logits of its step's first part with the bits of the parts before it."""
        return self.part is not None and self.part.refine is not None

    @property
    def whole(self) -> bool:
        """It codes every position of its step."""
        return self.part is None or not self.part.name

    def mask(self, height: int, width: int, device: torch.device | str | None = None) -> Tensor | None:
        """(1, 1, h, w) bool of its positions on the step's quarter grid; None for all."""
        return None if self.whole else pattern_mask(self.part.pattern, height, width, device)

    def valid(self, valid: Tensor) -> Tensor:
        """(B, 1, H, W) bool validity -> (B, 1, H/2, W/2): the positions this stage codes."""
        v = step_view(valid, self.s)
        mask = self.mask(v.shape[-2], v.shape[-1], v.device)
        return v if mask is None else v & mask


def coding_stages(net: BitPlaneNet) -> tuple[Stage, ...]:
    """The stages of each of ``net``'s planes, in decoding order."""
    return tuple(Stage(s, part) for s in range(1, NUM_STEPS + 1) for part in net.step_parts(s) or (None,))


@dataclass
class CodingStats:
    """Per-item figures of one coding run, in bits."""

    theoretical_bits: np.ndarray  # planes, unquantised probabilities (cross-entropy)
    quantised_bits: np.ndarray  # planes, ideal cost of the quantised probabilities

    @classmethod
    def zeros(cls, n: int) -> "CodingStats":
        return cls(np.zeros(n), np.zeros(n))


@dataclass
class _Round:
    """One batch: which items, their sizes, the padded size and masks."""

    items: list[int]
    shapes: list[ItemShape]
    height: int
    width: int
    valid: Tensor  # (n, 1, H, W) bool
    step_masks: list[np.ndarray] = field(default_factory=list)  # per step: (n, H/2*W/2) bool
    _stage_masks: dict[Stage, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.items)

    def rgb_lanes(self) -> np.ndarray:
        return np.array([c == 3 for c, _, _ in self.shapes])

    def stage_mask(self, stage: Stage) -> np.ndarray:
        """(n, H/2*W/2) bool: the valid positions ``stage`` codes, quarter grid row-major (read-only)."""
        if stage not in self._stage_masks:
            mask = self.step_masks[stage.s - 1]
            part = stage.mask(self.height // 2, self.width // 2)
            mask = mask if part is None else mask & part.numpy().reshape(1, -1)
            mask.flags.writeable = False  # shared by every caller
            self._stage_masks[stage] = mask
        return self._stage_masks[stage]


def plan_rounds(shapes: Sequence[ItemShape], lanes: int, multiple: int, device: torch.device) -> Iterator[_Round]:
    """Deals items to lanes, largest first; a round takes up to ``lanes`` items of at
    least half the padded area of its first, so that it holds items of similar size
    (little padding to compute and, in the ArIB modes, few latent dimensions spent on
    padding). Yields the rounds in decoding order. A function of the shapes only, so
    the decoder deals exactly as the encoder did."""

    def padded_area(i: int) -> tuple[int, int]:
        _, h, w = shapes[i]
        return -(-(-h // multiple) * multiple * (-(-w // multiple) * multiple)), i

    order = sorted(range(len(shapes)), key=padded_area)
    groups: list[list[int]] = []
    for i in order:  # a round never mixes items of less than half its largest item's area
        if groups and len(groups[-1]) < lanes and 2 * -padded_area(i)[0] >= -padded_area(groups[-1][0])[0]:
            groups[-1].append(i)
        else:
            groups.append([i])
    for idx in groups:
        sub = [shapes[i] for i in idx]
        height = -(-max(h for _, h, _ in sub) // multiple) * multiple
        width = -(-max(w for _, _, w in sub) // multiple) * multiple
        valid = np.zeros((len(idx), 1, height, width), dtype=bool)
        for j, (_, h, w) in enumerate(sub):
            valid[j, 0, :h, :w] = True
        masks = []
        for s in range(1, NUM_STEPS + 1):
            pr, pc = step_positions(s)
            masks.append(valid[:, 0, pr::2, pc::2].reshape(len(idx), -1))
        yield _Round(idx, sub, height, width, torch.from_numpy(valid).to(device), masks)


def lane_items(plan: Sequence[_Round], lanes: int) -> list[list[int]]:
    """The items of every lane in decoding order (round r puts its j-th item on lane j)."""
    out: list[list[int]] = [[] for _ in range(lanes)]
    for rnd in plan:
        for j, i in enumerate(rnd.items):
            out[j].append(i)
    return out


def _pad_batch(items: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Items (C, h, w) -> (n, 3, H, W) uint8, grey replicated, edge-padded."""
    batch = np.empty((len(items), 3, height, width), dtype=np.uint8)
    for j, item in enumerate(items):
        _, h, w = item.shape
        batch[j] = np.pad(item, ((0, 0), (0, height - h), (0, width - w)), mode="edge")
    return batch


def _replicate_pad(x: Tensor, shapes: Sequence[ItemShape]) -> Tensor:
    """Fill each item's padding with its edge pixels, in place (decoder side)."""
    height, width = x.shape[-2:]
    for j, (_, h, w) in enumerate(shapes):
        if h < height:
            x[j, :, h:, :w] = x[j, :, h - 1:h, :w]
        if w < width:
            x[j, :, :, w:] = x[j, :, :, w - 1:w]
    return x


@dataclass
class StepCodes:
    """What one (plane, stage) of a round hands the coder."""

    stage: Stage
    probs7: np.ndarray  # (n, H/2*W/2, 7) uint8
    bits: np.ndarray  # (n, 3, H/2, W/2) uint8


@dataclass
class PlaneCodes:
    """What one plane of a round hands the coder."""

    steps: list[StepCodes]
    symbols: np.ndarray | None  # (n,) temperature symbols (aribbps.temperature); None: files without them


class PlaneCodec:
    """Codes lists of items with a model's SIG and INS networks on L lanes.

    Args:
        nets: the two networks (eval mode, on ``device``).
        multiple: H and W of every batch are multiples of this.
        lanes: number of independent rANS stacks.
        device: where the networks run.
        threads: coder threads (0 = one per CPU).
        kernel_path: "torch" or "triton" (default: the device's, :mod:`kernels.dispatch`).
        prob_code: what the coder's probability bytes mean (``aribbps.probability``);
            the decoder passes the file's.
        overlap: compute the next round's network work while this one codes
            (:mod:`aribbps.overlap`; default: on CUDA only).
        temperatures: a temperature symbol per item and plane in the lanes
            (:mod:`aribbps.temperature`); the decoder passes the file's flag.
        corrections: the coder's probabilities are corrected by what the
            bits coded before taught (:mod:`aribbps.prob_correction`); the
            decoder passes the file's flag.

    This class codes every plane from the plane and space contexts alone
    ("context" mode). Its building blocks (:meth:`plane_codes`,
    :meth:`push_codes`, :meth:`decode_planes`) take the SIG heads' latent
    features as an argument: the extension point the ArIB codec
    (:mod:`aribbps.arib`) builds on.
    """

    def __init__(self, nets: PlaneNets, multiple: int, lanes: int, device: torch.device | str = "cpu",
                 threads: int = 0, kernel_path: str | None = None, overlap: bool | None = None,
                 prob_code: str = WRITTEN_PROB_CODE, temperatures: bool = True, corrections: bool = True) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.nets = nets
        self.multiple = max(2, multiple)
        self.lanes = lanes
        self.device = torch.device(device)
        self.threads = threads
        #: "torch" or "triton": which kernels compute the coder's probabilities.
        #: Encoder and decoder must use the same (the container records it).
        self.kernel_path = kernel_path or dispatch.kernel_path(self.device)
        self.prob_code = prob_code
        self.temperatures = temperatures
        self.corrections = corrections
        #: Encoder: compute the next round's network work while this round
        #: codes (:mod:`aribbps.overlap`); default on CUDA only.
        self.overlap = default_overlap(self.device) if overlap is None else overlap

    # ------------------------------------------------------------------ encode
    @torch.no_grad()
    def encode(self, items: Sequence[np.ndarray], progress: Callable[[int], None] | None = None,
               ids: Sequence[int] | None = None) -> tuple[list[bytes], CodingStats]:
        """Codes ``items`` ((C, h, w) uint8, C in {1, 3}); returns lane streams and stats.

        ``ids``: what the lane seals call the items (default their indices;
        see :func:`aribbps.lane_seal.lane_seals`); the decoder must pass the same.
        """
        if self.nets.sig.cfg.latent_channels > 0:
            raise ValueError("this model's SIG network takes latent features; code it in an ArIB mode")
        shapes = [_check_item(item) for item in items]
        stats = CodingStats.zeros(len(items))
        plan = list(plan_rounds(shapes, self.lanes, self.multiple, self.device))
        coder = self.sealed_coder(items, plan, ids)
        rounds = reversed(plan)

        def network(rnd: _Round) -> list[PlaneCodes]:
            return self.plane_codes(self.round_batch(items, rnd), rnd, range(1, 9), None, stats)

        for rnd, codes in prefetched(network, rounds, self.device, self.overlap):
            self.push_codes(coder, rnd, codes, stats)
            if progress is not None:
                progress(rnd.size)
        return coder.to_bytes(), stats

    def sealed_coder(self, items: Sequence[np.ndarray], plan: Sequence[_Round],
                     ids: Sequence[int] | None) -> LaneCoder:
        """Empty lanes, each sealed with the hash of its items (:mod:`aribbps.lane_seal`)."""
        coder = LaneCoder(self.lanes, self.threads, self.prob_code)
        coder.seal(lane_seals(items, lane_items(plan, self.lanes), ids))
        return coder

    def round_batch(self, items: Sequence[np.ndarray], rnd: _Round) -> Tensor:
        """The round's items as one padded (n, 3, H, W) uint8 batch on the device."""
        return torch.from_numpy(_pad_batch([items[i] for i in rnd.items], rnd.height, rnd.width)).to(self.device)

    def plane_codes(self, x: Tensor, rnd: _Round, planes: Iterable[int], latent: Tensor | None,
                    stats: CodingStats) -> list[PlaneCodes]:
        """Teacher-forced coder input of ``planes`` (decoding order); adds theoretical costs to ``stats``.

        With temperatures, each item's symbol for a plane is the one that
        makes the plane cheapest, and its probabilities are requantised at it.
        With corrections, the probabilities handed on are the corrected ones.
        """
        rgb = rnd.rgb_lanes()
        weight = torch.ones((rnd.size, 3, 1, 1), device=self.device)
        weight[~torch.from_numpy(rgb).to(self.device), 1:] = 0  # R only for greyscale items
        x_host = x.cpu()  # the true bits come from the host copy: no per-step transfer for them
        valid_host = rnd.valid.cpu().to(torch.uint8)
        theoretical = torch.zeros(rnd.size, dtype=torch.float64, device=self.device)
        codes: list[PlaneCodes] = []
        correction = ProbCorrection(rnd.size, self.prob_code) if self.corrections else None
        steps = teacher_forced_steps(self.nets, x, rnd.valid, latent, planes, self.kernel_path, self.prob_code)
        for k, plane_steps in groupby(steps, key=itemgetter(0)):
            plane = PlaneCodes([], None)
            costs = torch.zeros((rnd.size, len(SYMBOLS)), dtype=torch.float64, device=self.device)
            logits_of_steps: list[Tensor] = []
            true_bits = plane_bits(x_host, k) * valid_host
            for _, stage, probs7, logits, bits in plane_steps:
                host_bits = step_view(true_bits, stage.s).numpy()
                step_weight = weight * stage.valid(rnd.valid)
                if self.temperatures:
                    costs += candidate_costs(logits, step_view(bits, stage.s), step_weight)
                    logits_of_steps.append(logits)
                    plane.steps.append(StepCodes(stage, np.empty(0, np.uint8), host_bits))
                else:
                    theoretical += bits_cost(logits.float(), step_view(bits, stage.s), step_weight).double()
                    plane.steps.append(StepCodes(stage, dispatch.to_host(probs7), host_bits))  # one copy per stage
            if self.temperatures:
                theoretical += costs[:, NEUTRAL_SYMBOL]
                plane.symbols = choose_symbols(costs)
                tau = temperatures(plane.symbols, self.device)
                for step, logits in zip(plane.steps, logits_of_steps):
                    step.probs7 = dispatch.to_host(scaled_probs7(logits, tau, self.prob_code))
            if correction is not None:
                for step in plane.steps:  # decoding order: each stage corrected by the ones before it
                    corrected = correction.corrected(k, step.probs7)
                    correction.learn(k, step.probs7, step.bits, rnd.stage_mask(step.stage), rgb)
                    step.probs7 = corrected
            codes.append(plane)
        stats.theoretical_bits[rnd.items] += theoretical.cpu().numpy()  # once per round
        return codes

    def push_codes(self, coder: LaneCoder, rnd: _Round, codes: Sequence[PlaneCodes],
                   stats: CodingStats | None) -> None:
        """Pushes ``codes`` in reverse decoding order, each plane's symbols after its stages,
        so that the decoder pops them in order."""
        for plane in reversed(codes):
            for code in reversed(plane.steps):
                cost = self._push(coder, rnd, code.stage, code.probs7, code.bits)
                if stats is not None:
                    stats.quantised_bits[rnd.items] += cost
            if plane.symbols is not None:
                empty = np.zeros(0, np.uint32)
                coder.push_uniform([plane.symbols[j:j + 1] for j in range(rnd.size)]
                                   + [empty] * (self.lanes - rnd.size), TEMPERATURE_BITS)
                if stats is not None:
                    stats.quantised_bits[rnd.items] += TEMPERATURE_BITS

    def _push(self, coder: LaneCoder, rnd: _Round, stage: Stage, probs7: np.ndarray,
              step_bits: np.ndarray) -> np.ndarray:
        """Pushes one stage of every lane; returns the ideal quantised cost per item."""
        n = rnd.size
        bits = step_bits.reshape(n, 3, -1).transpose(0, 2, 1)  # (n, Q, 3)
        mask = rnd.stage_mask(stage)
        rgb = rnd.rgb_lanes()
        lane_bits = [bits[j][mask[j]] for j in range(n)]
        lane_probs = [probs7[j][mask[j]] for j in range(n)]
        empty3, empty7 = np.zeros((0, 3), np.uint8), np.zeros((0, 7), np.uint8)
        pad = self.lanes - n
        if rgb.any():
            coder.push_rgb([b if rgb[j] else empty3 for j, b in enumerate(lane_bits)] + [empty3] * pad,
                           [p if rgb[j] else empty7 for j, p in enumerate(lane_probs)] + [empty7] * pad)
        if not rgb.all():
            coder.push_binary([b[:, 0] if not rgb[j] else empty3[:, 0] for j, b in enumerate(lane_bits)]
                              + [empty3[:, 0]] * pad,
                              [p[:, 0] if not rgb[j] else empty7[:, 0] for j, p in enumerate(lane_probs)]
                              + [empty7[:, 0]] * pad)
        return np.array([_quantised_cost(lane_bits[j], lane_probs[j], bool(rgb[j]), self.prob_code)
                         for j in range(n)])

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode(self, shapes: Sequence[ItemShape], streams: Sequence[bytes],
               progress: Callable[[int], None] | None = None, sealed: bool = True,
               ids: Sequence[int] | None = None) -> list[np.ndarray]:
        """Decodes items of the given shapes from lane streams.

        ``sealed``: the streams end in lane seals (format version 3), made
        with the items' ``ids`` as in :meth:`encode`; else (versions 1-2) they
        must end empty and the container's per-image checksums are the check.

        Raises:
            aribbps.coder.StreamError / NotEnoughBitsError: damaged streams.
            LaneSealError: lanes that did not decode to what was encoded.
            ValueError: unsealed streams left with unread bits (damaged or wrong model).
        """
        coder = self.open_streams(streams)
        out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(shapes)
        plan = list(plan_rounds(list(shapes), self.lanes, self.multiple, self.device))
        for rnd in plan:
            x = self.empty_batch(rnd)
            self.decode_planes(coder, rnd, x, range(1, 9), None)
            self.collect(x, rnd, out)
            if progress is not None:
                progress(rnd.size)
        self.check_end(coder, out, plan, sealed, ids)
        return out

    def open_streams(self, streams: Sequence[bytes]) -> LaneCoder:
        if len(streams) != self.lanes:
            raise ValueError(f"expected {self.lanes} lane streams, got {len(streams)}")
        return LaneCoder.from_bytes(streams, self.threads, self.prob_code)

    def empty_batch(self, rnd: _Round) -> Tensor:
        return torch.zeros((rnd.size, 3, rnd.height, rnd.width), dtype=torch.uint8, device=self.device)

    @staticmethod
    def collect(x: Tensor, rnd: _Round, out: list[np.ndarray]) -> None:
        pixels = x.cpu().numpy()
        for j, i in enumerate(rnd.items):
            c, h, w = rnd.shapes[j]
            out[i] = np.ascontiguousarray(pixels[j, :c, :h, :w])

    def check_end(self, coder: LaneCoder, out: Sequence[np.ndarray], plan: Sequence[_Round], sealed: bool,
                  ids: Sequence[int] | None) -> None:
        """After the last round: the lane seals match the decoded items, or (unsealed) the lanes are empty."""
        if sealed:
            check_lane_seals(coder, out, lane_items(plan, self.lanes), ids)
        elif not coder.is_empty().all():
            raise ValueError("lane streams hold more bits than the images need: the file is damaged "
                             "or was written by another model")

    def decode_planes(self, coder: LaneCoder, rnd: _Round, x: Tensor, planes: Iterable[int],
                      latent: Tensor | None) -> None:
        """Pops ``planes`` of a round into ``x`` (n, 3, H, W) uint8, in place.

        ``x`` must hold the planes above the first one (zeros below them).
        """
        valid = rnd.valid
        rgb = rnd.rgb_lanes()
        correction = ProbCorrection(rnd.size, self.prob_code) if self.corrections else None
        for k in planes:
            tau = temperatures(self._pop_symbols(coder, rnd), self.device) if self.temperatures else None
            net = self.nets.net_for(k)
            known = _replicate_pad(x.clone(), rnd.shapes)
            context = net.plane_context(known, k, valid)
            bits = torch.zeros_like(x)
            lat = latent if net.cfg.latent_channels > 0 else None
            head_logits: Tensor | None = None
            for stage in coding_stages(net):
                probs7, logits = stage_probs7(net, k, stage, context, bits, valid, lat, head_logits,
                                              self.kernel_path, self.prob_code, tau)
                if not stage.refined:
                    head_logits = logits
                host_probs7 = dispatch.to_host(probs7)
                if correction is None:
                    step_bits = self._pop(coder, rnd, stage, host_probs7, rgb)
                else:
                    step_bits = self._pop(coder, rnd, stage, correction.corrected(k, host_probs7), rgb)
                    correction.learn(k, host_probs7, step_bits, rnd.stage_mask(stage), rgb)
                pr, pc = step_positions(stage.s)
                bits[:, :, pr::2, pc::2] |= torch.from_numpy(step_bits).to(self.device)
            x |= bits << (8 - k)

    def _pop_symbols(self, coder: LaneCoder, rnd: _Round) -> np.ndarray:
        """Pops the temperature symbol of every item of the round for one plane: (n,)."""
        got = coder.pop_uniform([1 if j < rnd.size else 0 for j in range(self.lanes)], TEMPERATURE_BITS)
        return np.array([int(got[j][0]) for j in range(rnd.size)], np.uint32)

    def _pop(self, coder: LaneCoder, rnd: _Round, stage: Stage, probs7: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Pops one stage of every lane; returns (n, 3, H/2, W/2) bits (0 where the stage codes none)."""
        n = rnd.size
        h2, w2 = rnd.height // 2, rnd.width // 2
        mask = rnd.stage_mask(stage)
        lane_probs = [probs7[j][mask[j]] for j in range(n)]
        empty7 = np.zeros((0, 7), np.uint8)
        pad = self.lanes - n
        flat = np.zeros((n, h2 * w2, 3), dtype=np.uint8)
        if rgb.any():
            got = coder.pop_rgb([p if rgb[j] else empty7 for j, p in enumerate(lane_probs)] + [empty7] * pad)
            for j in np.flatnonzero(rgb):
                flat[j][mask[j]] = got[j]
        if not rgb.all():
            got = coder.pop_binary([p[:, 0] if not rgb[j] else empty7[:, 0] for j, p in enumerate(lane_probs)]
                                   + [empty7[:, 0]] * pad)
            for j in np.flatnonzero(~rgb):
                flat[j][mask[j]] = got[j][:, None]
        return flat.transpose(0, 2, 1).reshape(n, 3, h2, w2)


def stage_probs7(net: BitPlaneNet, k: int, stage: Stage, context: Tensor, bits: Tensor, valid: Tensor,
                 latent: Tensor | None, head_logits: Tensor | None, kernel_path: str,
                 prob_code: str = WRITTEN_PROB_CODE, tau: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The coder's probabilities and the logits of one (plane, stage).

    ``bits`` holds the plane's bits known before the stage (zeros elsewhere).
    A refined part of a step refines ``head_logits``, the logits of the
    step's first part, in torch on either kernel path. ``tau`` (n,): per-item
    temperatures the probabilities are quantised at (the logits returned
    are the model's own).

    Returns:
        probs7 (n, Q, 7) uint8 on the device, logits (n, 6, H/2, W/2).
    """
    if stage.refined:
        if head_logits is None:
            raise ValueError(f"step-{stage.s} part {stage.part.name!r} needs the logits of the step's first part")
        logits = net.refined_logits(k, stage.part, context, head_logits, bits, valid, latent)
        if tau is not None:
            return scaled_probs7(logits, tau, prob_code), logits
        return dispatch.quantise_probs7(logits, prob_code), logits
    probs7, logits = dispatch.step_probs7(net, k, stage.s, context, bits, valid, latent,
                                          path=kernel_path, return_logits=True, prob_code=prob_code)
    if tau is not None:
        return scaled_probs7(logits, tau, prob_code), logits
    return probs7, logits


def teacher_forced_steps(nets: PlaneNets, x: Tensor, valid: Tensor, latent: Tensor | None = None,
                         planes: Iterable[int] = range(1, 9), kernel_path: str = "torch",
                         prob_code: str = WRITTEN_PROB_CODE) -> Iterator[tuple[int, Stage, Tensor, Tensor, Tensor]]:
    """The coder input of every (plane, stage) of padded images ``x``, from the true bits.

    Exactly the network calls the decoder makes (same inputs, same shapes,
    same kernel path): known image before plane k, bits of the stages before
    at valid positions, and ``latent`` features for the networks that take them.
    Yields ``(k, stage, probs7, logits, plane_bits)``: probs7 (n, Q, 7) uint8
    on the device, logits (n, 6, H/2, W/2); ``stage.valid(valid)`` says
    which positions the stage codes.
    """
    valid_u8 = valid.to(torch.uint8)
    height, width = x.shape[-2:]
    for k in planes:
        net = nets.net_for(k)
        context = net.plane_context(known_before(x, k), k, valid)
        bits = plane_bits(x, k) * valid_u8
        lat = latent if net.cfg.latent_channels > 0 else None
        head_logits: Tensor | None = None
        for stage in coding_stages(net):
            known = bits * steps_before_mask(stage.s, height, width, x.device).to(torch.uint8)
            if stage.refined:  # + the parts of its step before it
                pattern = pattern_mask(stage.part.known, height // 2, width // 2, x.device)
                step_view(known, stage.s).copy_(step_view(bits, stage.s) * pattern.to(torch.uint8))
            probs7, logits = stage_probs7(net, k, stage, context, known, valid, lat, head_logits, kernel_path,
                                          prob_code)
            if not stage.refined:
                head_logits = logits
            yield k, stage, probs7, logits, bits


def theoretical_cost(logits: Tensor, step_bits: Tensor, step_valid: Tensor, rgb: Tensor) -> Tensor:
    """Cross-entropy (bits, unquantised probabilities) per batch item of one step.

    ``rgb`` (B,) bool: False for greyscale/alpha items, of which only R is coded.
    """
    channels = torch.ones((len(rgb), 3, 1, 1), device=logits.device)
    channels[~rgb, 1:] = 0
    return bits_cost(logits.float(), step_bits, channels * step_valid)


def _check_item(item: np.ndarray) -> ItemShape:
    if item.dtype != np.uint8 or item.ndim != 3 or item.shape[0] not in (1, 3) or min(item.shape[1:]) < 1:
        raise ValueError(f"items must be uint8 (C, h, w) with C in {{1, 3}}, got {item.dtype} {item.shape}")
    return int(item.shape[0]), int(item.shape[1]), int(item.shape[2])


def _quantised_cost(bits: np.ndarray, probs7: np.ndarray, rgb: bool, prob_code: str) -> float:
    """Ideal cost in bits of a lane's stage, ``(m, 3)`` bits and ``(m, 7)`` bytes (only R when not ``rgb``)."""
    precision, one = probability_masses(prob_code)
    channels = 3 if rgb else 1
    b = bits.T[None].astype(np.int64)  # (1, 3, m)
    b[:, channels:] = 0
    q = one[select_probs7(probs7[None], b)[0, :channels]].astype(np.int64)
    mass = np.where(b[0, :channels] == 1, q, (1 << precision) - q)
    return float((precision - np.log2(mass.astype(np.float64))).sum())
