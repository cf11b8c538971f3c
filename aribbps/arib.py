"""ArIB: bits-back coding with autoregressive initial bits (DESIGN 1.6).

One rANS stack per lane holds everything. For one round (one item per lane)
the decoder:

1. pops the latent bins of every layer under the uniform prior (qp bits
   each), top layer first, turning them into latent values with the prior
   means of the layers above (top-down pass 1);
2. pops the significant planes given the latent features;
3. pushes the latents back under the posterior q(z | significant planes)
   (top-down pass 2 recomputes the posterior means from the decoded planes):
   this returns the bits the encoder borrowed;
4. pops the insignificant planes;
5. pops the pseudo-random padding words, if the encoder needed any, and checks
   them.

The encoder does the reverse: padding, insignificant planes (the initial
bits), pops (samples) the latents from the posterior out of those bits,
pushes the significant planes, pushes the latents under the prior.

Modes:
* ``single``: each item's qp is chosen from the bits its own insignificant
  planes provide (about bits / latent dimensions, clamped to [1, 10]); if the
  stack runs dry while sampling, the round is rolled back and the short lane
  retried with a lower qp, then with padding words (auxiliary bits).
* ``dataset``: qp = 10; each lane is a chain, so an item's latents are
  sampled out of the bits of the items after it in the lane. Only the item
  coded first (decoded last) of a lane can lack bits; it gets a lower qp as
  in single mode (a departure from the fixed qp of DESIGN 1.6, so that short
  chains, e.g. as many lanes as images, cost no more than single images) and
  padding only where even qp = 1 needs more.

The lowest qp the encoder uses is 1, not the paper's 3 (DESIGN 1.6): on
smooth images the insignificant planes hold too few bits even for qp = 2,
and every padding bit that makes up for them costs a bit in the file, while
the fine-tuned latent model (stage 4 on) loses little with two bins per
dimension (``bench/single_qp_floor.py``, figures in ``docs/default_model.md``:
single-image files 0.6-0.9% smaller on the held-out sets than with qp 2 as
the floor). The decoder accepts every qp the coder supports (1..16). Padding
is trimmed after a successful sample (:func:`_trimmed_padding`).

The decoder reads qp and the padding word count per item; everything else is
recomputed from the integers it decodes, exactly as the encoder built them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from aribbps.codec import (
    CodingStats, PlaneCodes, ItemShape, PlaneCodec, PlaneNets, _check_item, _replicate_pad, _Round, plan_rounds,
)
from aribbps.coder import LATENT_PRECISION_BITS, LaneCoder, latent_freqs
from aribbps.latent_math import LATENT_MAX_QP, LATENT_MIN_QP, bin_values
from aribbps.models.latent import LatentModel
from aribbps.overlap import prefetched
from aribbps.probability import WRITTEN_PROB_CODE
from kernels import dispatch

ARIB_MODES = ("single", "dataset")
QP_MIN, QP_MAX = 1, 10  # the encoder's choices; the decoder accepts LATENT_MIN_QP..LATENT_MAX_QP
QP_DATASET = 10
_PADDING_SEED = 0x41524942_00000000  # "ARIB" << 32; plus the item index
_MAX_ATTEMPTS = 64
_PAD_MARGIN_BITS = 64  # what trimmed padding leaves beyond the last sample's need


@dataclass
class AribStats(CodingStats):
    """Per-item figures of an ArIB run, in bits (plus the side information)."""

    prior_bits: np.ndarray  # qp * |z|: pushing the latents under the uniform prior
    posterior_bits: np.ndarray  # -log2 q(z|x) of the sampled bins: the bits got back
    padding_bits: np.ndarray  # pseudo-random words pushed as initial bits (auxiliary)
    qp: np.ndarray  # per item
    padding_words: np.ndarray  # per item

    @classmethod
    def zeros(cls, n: int) -> "AribStats":
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n),
                   np.zeros(n, np.int64), np.zeros(n, np.int64))

    def net_bits(self) -> np.ndarray:
        """Expected stream cost per item: planes + qp|z| - posterior + padding."""
        return self.quantised_bits + self.prior_bits - self.posterior_bits + self.padding_bits


def _trimmed_padding(pad: np.ndarray, left_bits: np.ndarray) -> np.ndarray:
    """Padding words to try instead of ``pad``, given the bits a successful sample left on each lane.

    The encoder sizes padding generously (its first guess adds 256 bits, and
    a failure doubles it), and every bit the sample does not consume stays in
    the file. A sample out of different padding differs, so the trimmed
    padding keeps a margin of :data:`_PAD_MARGIN_BITS`; the caller goes
    back to ``pad`` on any lane where it still runs dry.
    """
    spare_words = np.maximum(left_bits - _PAD_MARGIN_BITS, 0) // 32
    return np.where(pad > 0, np.maximum(pad - spare_words, 0), pad)


def choose_qp(initial_bits: np.ndarray, latent_dims: int) -> np.ndarray:
    """qp per item from the initial bits available: about bits / dims, in [QP_MIN, QP_MAX]."""
    return np.clip(np.floor(initial_bits / max(latent_dims, 1)), QP_MIN, QP_MAX).astype(np.uint8)


class AribCodec(PlaneCodec):
    """The bit-plane codec with the latent model and bits-back coding.

    Args:
        nets: SIG and INS networks; ``nets.sig.latent`` is the ladder VAE.
        multiple: H and W of every batch are multiples of this (>= 2**n_layers).
        lanes, device, threads, kernel_path, overlap, prob_code, temperatures, corrections: as for
            :class:`aribbps.codec.PlaneCodec`.
        mode: "single" or "dataset".
    """

    def __init__(self, nets: PlaneNets, multiple: int, lanes: int, mode: str,
                 device: torch.device | str = "cpu", threads: int = 0, kernel_path: str | None = None,
                 overlap: bool | None = None, prob_code: str = WRITTEN_PROB_CODE, temperatures: bool = True,
                 corrections: bool = True) -> None:
        super().__init__(nets, multiple, lanes, device, threads, kernel_path, overlap, prob_code, temperatures,
                         corrections)
        if mode not in ARIB_MODES:
            raise ValueError(f"unknown ArIB mode {mode!r}; choose one of {', '.join(ARIB_MODES)}")
        if nets.sig.latent is None:
            raise ValueError("this model has no latent model (use_latent=false); it codes only in 'context' mode")
        self.latent: LatentModel = nets.sig.latent
        self.mode = mode
        self.sig_planes = nets.sig.planes
        self.ins_planes = nets.ins.planes

    # ------------------------------------------------------------------ encode
    @torch.no_grad()
    def encode(self, items: Sequence[np.ndarray], progress: Callable[[int], None] | None = None,
               ids: Sequence[int] | None = None) -> tuple[list[bytes], AribStats]:
        shapes = [_check_item(item) for item in items]
        stats = AribStats.zeros(len(items))
        plan = list(plan_rounds(shapes, self.lanes, self.multiple, self.device))
        coder = self.sealed_coder(items, plan, ids)
        rounds = reversed(plan)
        for rnd, ahead in prefetched(lambda r: self._coder_free_work(items, r, stats), rounds,
                                     self.device, self.overlap):
            coder = self._encode_round(coder, rnd, ahead, stats)
            if progress is not None:
                progress(rnd.size)
        return coder.to_bytes(), stats

    def _coder_free_work(self, items: Sequence[np.ndarray], rnd: _Round, stats: AribStats
                         ) -> tuple[Tensor, list[PlaneCodes], list[Tensor]]:
        """What a round's encoding computes before it touches the coder: batch, INS codes, bottom-up pass."""
        x = self.round_batch(items, rnd)
        return x, self.plane_codes(x, rnd, self.ins_planes, None, stats), self.latent.bottom_up(x)

    def _encode_round(self, coder: LaneCoder, rnd: _Round, ahead: tuple[Tensor, list[PlaneCodes], list[Tensor]],
                      stats: AribStats) -> LaneCoder:
        x, ins_codes, bottom_up = ahead
        n = rnd.size
        dims = self.latent.latent_dims(rnd.height, rnd.width)
        snapshot = coder.to_bytes()
        pad = np.zeros(n, np.int64)
        untrimmed: np.ndarray | None = None  # padding that worked, kept while a trimmed one is tried
        qp: np.ndarray | None = None
        for attempt in range(_MAX_ATTEMPTS):
            if attempt:
                coder = LaneCoder.from_bytes(snapshot, self.threads, self.prob_code)
            before = coder.num_bits()[:n]
            coder.push_padding(self._lane_array(pad, np.int64), self._seeds(rnd))
            self.push_codes(coder, rnd, ins_codes, stats if attempt == 0 else None)
            initial = coder.num_bits()[:n] - before
            if qp is None:
                qp = self._initial_qp(initial, coder.num_bits()[:n], dims)
            sample = self._sample_posterior(coder, rnd, bottom_up, qp)
            if sample.ok.all():
                if untrimmed is None and pad.any() and attempt + 2 < _MAX_ATTEMPTS:
                    trimmed = _trimmed_padding(pad, coder.num_bits()[:n] - before)
                    if (trimmed < pad).any():
                        untrimmed, pad = pad, trimmed
                        continue
                break
            failing = ~sample.ok
            if untrimmed is not None:  # a trimmed lane that ran dry samples as before from its untrimmed padding
                reverted = failing & (pad != untrimmed)
                pad = np.where(reverted, untrimmed, pad)
                failing &= ~reverted
            for j in np.flatnonzero(failing):
                if qp[j] > QP_MIN:
                    qp[j] -= 1
                else:
                    pad[j] = max(2 * pad[j], (int(qp[j]) * dims - int(initial[j])) // 32 + 8)
        else:  # pragma: no cover - the padding doubles each time, so this needs ~2^64 bits
            raise RuntimeError("could not provide enough initial bits for the latent sample")
        self.push_codes(coder, rnd, self.plane_codes(x, rnd, self.sig_planes, sample.features, stats), stats)
        for layer in range(self.latent.n_layers):  # bottom first: the decoder pops the top first
            self._push_uniform(coder, rnd, sample.bins[layer], qp)
        stats.qp[rnd.items] = qp
        stats.padding_words[rnd.items] = pad
        stats.padding_bits[rnd.items] = 32.0 * pad
        stats.prior_bits[rnd.items] = qp.astype(np.float64) * dims
        stats.posterior_bits[rnd.items] = sample.posterior_bits
        return coder

    @torch.no_grad()
    def initial_qp(self, items: Sequence[np.ndarray], progress: Callable[[int], None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Single-image mode's first qp choice for each item, as if it were coded alone.

        Pushes each item's insignificant planes onto a fresh lane, exactly
        as :meth:`encode` does before it samples the latents, and applies
        :func:`choose_qp` to the bits the lane then holds and the latent
        dimensions of the round's padded size. This is the qp list that
        ``--mode finetune`` trains with (``generate-finetune``).

        Each item must be alone on its lane in its round, so that nothing
        else is on the stack. Items padded to the same size as they would
        be when coded alone, in the same batch layout, give exactly the
        encoder's choice; the encoder can still lower it later if sampling
        the posterior runs out of bits (rare: see :meth:`encode`).

        Args:
            items: (C, h, w) uint8 with C in {1, 3}.
            progress: called with the number of items done after each round.

        Returns:
            ``(initial_bits, qp)``: float64 (n,) bits on each lane after
            the insignificant planes, and uint8 (n,) qp in [QP_MIN, QP_MAX].
        """
        shapes = [_check_item(item) for item in items]
        initial = np.zeros(len(items))
        qp = np.zeros(len(items), np.uint8)
        for rnd in plan_rounds(shapes, self.lanes, self.multiple, self.device):
            x = self.round_batch(items, rnd)
            codes = self.plane_codes(x, rnd, self.ins_planes, None, CodingStats.zeros(len(items)))
            coder = LaneCoder(self.lanes, self.threads, self.prob_code)
            self.push_codes(coder, rnd, codes, None)
            bits = coder.num_bits()[: rnd.size].astype(np.float64)
            initial[rnd.items] = bits
            qp[rnd.items] = choose_qp(bits, self.latent.latent_dims(rnd.height, rnd.width))
            if progress is not None:
                progress(rnd.size)
        return initial, qp

    def _initial_qp(self, own_bits: np.ndarray, stack_bits: np.ndarray, dims: int) -> np.ndarray:
        """First qp to try per item (the encoder lowers it if sampling runs dry).

        single: from the item's own initial bits. dataset: 10 wherever the
        lane's stack holds enough bits, as chains normally do; at the start of
        a chain (the first item coded, the last decoded) it falls back to the
        single-mode rule, so a short chain costs no more than single images.
        """
        if self.mode == "single":
            return choose_qp(own_bits, dims)
        return np.where(stack_bits >= QP_DATASET * dims, QP_DATASET, choose_qp(stack_bits, dims)).astype(np.uint8)

    @dataclass
    class _Sample:
        bins: dict[int, np.ndarray]  # layer -> (n, C, h, w) uint32
        features: Tensor
        ok: np.ndarray  # (n,) bool
        posterior_bits: np.ndarray  # (n,)

    def _sample_posterior(self, coder: LaneCoder, rnd: _Round, bottom_up: list[Tensor],
                          qp: np.ndarray) -> "_Sample":
        """Pops every layer's bins from the posterior (top first): the bits-back sample."""
        n = rnd.size
        qp_lanes = self._lane_array(qp, np.uint8, fill=QP_MIN)
        qp_t = torch.from_numpy(qp.astype(np.int64)).to(self.device)
        ok = np.ones(n, bool)
        bins: dict[int, np.ndarray] = {}
        posterior = np.zeros(n)

        def sample(layer: int, mu_p: Tensor, mu_q: Tensor | None) -> Tensor:
            assert mu_q is not None
            d = dispatch.quantise_latent_offsets(mu_q - mu_p)
            got, lane_ok = coder.pop_latent_partial(self._per_lane(d.reshape(n, -1), np.int32), qp_lanes)
            ok[:] &= lane_ok[:n]
            b = np.stack(got[:n]).reshape(d.shape).astype(np.uint32)
            bins[layer] = b
            for j in range(n):
                if ok[j]:
                    freqs = latent_freqs(b[j], d[j], int(qp[j]))
                    posterior[j] += float((LATENT_PRECISION_BITS - np.log2(freqs.astype(np.float64))).sum())
            return bin_values(torch.from_numpy(b.astype(np.int64)).to(self.device), mu_p, qp_t)

        features = self.latent.top_down(sample, bottom_up, n, rnd.height, rnd.width)
        return self._Sample(bins, features, ok, posterior)

    def _push_uniform(self, coder: LaneCoder, rnd: _Round, bins: np.ndarray, qp: np.ndarray) -> None:
        n = rnd.size
        flat = bins.reshape(n, -1)
        for value in np.unique(qp):
            lanes = [flat[j] if qp[j] == value else flat[j][:0] for j in range(n)]
            coder.push_uniform(lanes + [flat[0][:0]] * (self.lanes - n), int(value))

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode(self, shapes: Sequence[ItemShape], streams: Sequence[bytes], qp: Sequence[int],
               padding_words: Sequence[int], progress: Callable[[int], None] | None = None,
               sealed: bool = True, ids: Sequence[int] | None = None) -> list[np.ndarray]:
        """Decodes items given their shapes, qp and padding word counts (from the container);
        ``sealed``, ``ids``: as for :meth:`aribbps.codec.PlaneCodec.decode`."""
        if len(qp) != len(shapes) or len(padding_words) != len(shapes):
            raise ValueError("need one qp and one padding count per item")
        # Checked as Python ints first: a damaged header may hold any integer, even beyond int64.
        if any(not LATENT_MIN_QP <= int(q) <= LATENT_MAX_QP for q in qp):
            raise ValueError(f"qp values must lie in [{LATENT_MIN_QP}, {LATENT_MAX_QP}]")
        if any(not 0 <= int(w) <= 1 << 28 for w in padding_words):
            raise ValueError("padding word counts are out of range")
        qp_all = np.asarray(qp, np.int64)
        pad_all = np.asarray(padding_words, np.int64)
        coder = self.open_streams(streams)
        out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(shapes)
        plan = list(plan_rounds(list(shapes), self.lanes, self.multiple, self.device))
        for rnd in plan:
            x = self._decode_round(coder, rnd, qp_all[rnd.items].astype(np.uint8), pad_all[rnd.items])
            self.collect(x, rnd, out)
            if progress is not None:
                progress(rnd.size)
        self.check_end(coder, out, plan, sealed, ids)
        return out

    def _decode_round(self, coder: LaneCoder, rnd: _Round, qp: np.ndarray, pad: np.ndarray) -> Tensor:
        n = rnd.size
        qp_t = torch.from_numpy(qp.astype(np.int64)).to(self.device)
        shapes = self.latent.layer_shapes(rnd.height, rnd.width)
        bins: dict[int, np.ndarray] = {}

        def prior_sample(layer: int, mu_p: Tensor, mu_q: Tensor | None) -> Tensor:
            c, h, w = shapes[layer]
            b = self._pop_uniform(coder, rnd, qp, c * h * w).reshape(n, c, h, w)
            bins[layer] = b
            return bin_values(torch.from_numpy(b.astype(np.int64)).to(self.device), mu_p, qp_t)

        features = self.latent.top_down(prior_sample, None, n, rnd.height, rnd.width)
        x = self.empty_batch(rnd)
        self.decode_planes(coder, rnd, x, self.sig_planes, features)

        offsets: dict[int, np.ndarray] = {}

        def known_sample(layer: int, mu_p: Tensor, mu_q: Tensor | None) -> Tensor:
            assert mu_q is not None
            offsets[layer] = dispatch.quantise_latent_offsets(mu_q - mu_p)
            return bin_values(torch.from_numpy(bins[layer].astype(np.int64)).to(self.device), mu_p, qp_t)

        bottom_up = self.latent.bottom_up(_replicate_pad(x.clone(), rnd.shapes))
        self.latent.top_down(known_sample, bottom_up, n, rnd.height, rnd.width)
        qp_lanes = self._lane_array(qp, np.uint8, fill=QP_MIN)
        for layer in range(self.latent.n_layers):  # undo the encoder's pops, last popped first
            coder.push_latent(self._per_lane(bins[layer].reshape(n, -1), np.uint32),
                              self._per_lane(offsets[layer].reshape(n, -1), np.int32), qp_lanes)
        self.decode_planes(coder, rnd, x, self.ins_planes, None)
        ok = coder.pop_padding(self._lane_array(pad, np.int64), self._seeds(rnd))
        if not ok.all():
            raise ValueError("padding words do not match: the stream is corrupted")
        return x

    def _pop_uniform(self, coder: LaneCoder, rnd: _Round, qp: np.ndarray, count: int) -> np.ndarray:
        n = rnd.size
        out = np.zeros((n, count), np.uint32)
        for value in np.unique(qp):
            counts = [count if j < n and qp[j] == value else 0 for j in range(self.lanes)]
            got = coder.pop_uniform(counts, int(value))
            for j in np.flatnonzero(qp == value):
                out[j] = got[j]
        return out

    # ------------------------------------------------------------------ lanes
    def _lane_array(self, values: np.ndarray, dtype: type, fill: int = 0) -> np.ndarray:
        """Per-item values as a per-lane array (lanes without an item get ``fill``)."""
        out = np.full(self.lanes, fill, dtype=dtype)
        out[: len(values)] = values
        return out

    def _per_lane(self, rows: np.ndarray, dtype: type) -> list[np.ndarray]:
        """(n, m) rows as per-lane arrays, empty for lanes without an item."""
        lanes = [np.ascontiguousarray(r, dtype=dtype) for r in rows]
        return lanes + [np.zeros(0, dtype)] * (self.lanes - len(lanes))

    def _seeds(self, rnd: _Round) -> np.ndarray:
        seeds = np.zeros(self.lanes, np.uint64)
        seeds[: rnd.size] = [_PADDING_SEED + i for i in rnd.items]
        return seeds
