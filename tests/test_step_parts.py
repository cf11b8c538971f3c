"""Split lattice steps: causality, the coding stages, exact round trips, training pieces."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aribbps.arib import AribCodec
from aribbps.bitplanes import plane_bits, step_view
from aribbps.codec import PlaneCodec, PlaneNets, Stage, coding_stages, teacher_forced_steps, theoretical_cost
from aribbps.config import REFINE_FIELDS, SPLIT_FIELDS, ModelConfig, get_config
from aribbps.models.bitplane_net import build_nets
from aribbps.models.deepen import deepen, deepening_problem
from aribbps.models.step_parts import StepPart, first_step_parts, later_step_parts, pattern_mask
from aribbps.train.trainer import freeze_all_but
from kernels import HAS_TRITON, interpreter_mode
from tests.conftest import smooth_images


def split_config(base: str = "tiny", levels: int = 1) -> ModelConfig:
    """``levels`` 1-5: split_first_step, + split_step_1a, + split_step_1a1, + split_step_2, + split_step_1a1a;
    6: level 4 + split_step_3 and split_step_4."""
    return dataclasses.replace(get_config(base), name=f"{base}-split{levels}", split_first_step=True,
                               split_step_1a=levels >= 2, split_step_1a1=levels >= 3, split_step_2=levels >= 4,
                               split_step_1a1a=levels == 5, split_step_3=levels >= 6, split_step_4=levels >= 6,
                               refine_width=8)


def split_nets(base: str = "tiny", seed: int = 0, scale: float = 0.3, levels: int = 1) -> tuple[PlaneNets, int]:
    torch.manual_seed(seed)
    cfg = split_config(base, levels)
    sig, ins = build_nets(cfg)
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * scale)
    return PlaneNets(sig.eval(), ins.eval()), cfg.pad_multiple


def _items(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = 1 if i % 4 == 3 else 3
        h, w = rng.integers(1, 21, 2)
        base = rng.integers(0, 256, (c, 1, 1))
        out.append(np.clip(base + rng.integers(-25, 26, (c, h, w)), 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5, 6])
def test_the_parts_partition_their_steps(levels: int) -> None:
    nets, _ = split_nets(levels=levels)
    stages = coding_stages(nets.ins)
    names = {1: ["a", "b"], 2: ["a1", "a2", "b"], 3: ["a1a", "a1b", "a2", "b"], 4: ["a1a", "a1b", "a2", "b"],
             5: ["a1a1", "a1a2", "a1b", "a2", "b"], 6: ["a1a", "a1b", "a2", "b"]}[levels]
    later = [(s, n) for s in (2, 3, 4) for n in (("a", "b") if levels >= 4 + (s > 2) * 2 else (None,))]
    assert [(st.s, st.part.name if st.part else None) for st in stages] == [(1, n) for n in names] + later
    plain, _ = arib_free_nets()
    assert [(st.s, st.whole) for st in coding_stages(plain.ins)] == [(s, True) for s in range(1, 5)]
    valid = torch.zeros(2, 1, 10, 12, dtype=torch.bool)
    valid[0, :, :7, :9] = True
    valid[1] = True
    for s in (1, 2, 3, 4):
        parts = [st.valid(valid) for st in stages if st.s == s]
        assert int(sum(p.sum() for p in parts)) == int(Stage(s).valid(valid).sum())
        assert torch.equal(torch.stack(parts).any(0), Stage(s).valid(valid))
    later_orders = [later_step_parts(s, split) for s, split in ((2, levels >= 4), (3, levels >= 6), (4, levels >= 6))]
    for order in [first_step_parts(True, levels >= 2, levels >= 3, levels == 5), *later_orders]:
        for i, part in enumerate(order):  # each refined part reads only parts of its step coded before it
            if part.known is not None:
                coded_before = torch.stack([pattern_mask(p.pattern, 6, 6) for p in order[:i]]).any(0)
                assert not (pattern_mask(part.known, 6, 6) & ~coded_before).any()
                assert not (pattern_mask(part.known, 6, 6) & pattern_mask(part.pattern, 6, 6)).any()
                assert part.step == order[0].step
    with pytest.raises(ValueError, match="steps 2-4"):
        later_step_parts(1, True)
    assert pattern_mask("a", 3, 3)[0, 0].tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert pattern_mask("a2", 3, 3)[0, 0].tolist() == [[False, False, False], [False, True, False],
                                                       [False, False, False]]
    assert torch.equal(pattern_mask("a1a1", 8, 8) | pattern_mask("a1a2", 8, 8), pattern_mask("a1a", 8, 8))
    assert pattern_mask("a1a2", 8, 8)[0, 0].nonzero().tolist() == [[2, 2], [2, 6], [6, 2], [6, 6]]


def arib_free_nets() -> tuple[PlaneNets, int]:
    cfg = get_config("tiny")
    sig, ins = build_nets(cfg)
    return PlaneNets(sig.eval(), ins.eval()), cfg.pad_multiple


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5, 6])
def test_a_refined_part_reads_its_known_bits_and_nothing_else(levels: int) -> None:
    nets, _ = split_nets(levels=levels)
    net = nets.ins
    x = smooth_images(2, 16, 0)
    k = net.planes[0]
    with torch.no_grad():
        context = net.plane_context(x, k)
        bits = plane_bits(x, k)
        for part in sum((net.step_parts(s) for s in range(1, 5)), ()):
            if part.refine is None:
                continue
            logits = net.step_logits(k, part.step, context, bits)
            refined = net.refined_logits(k, part, context, logits, bits)
            known = pattern_mask(part.known, 8, 8)
            flip_other, flip_known = bits.clone(), bits.clone()
            step_view(flip_other, part.step)[:] ^= (~known).to(torch.uint8)
            step_view(flip_known, part.step)[:] ^= known.to(torch.uint8)
            for s in {1, 2, 3, 4} - {part.step}:  # and no bit of the other steps
                step_view(flip_other, s)[:] ^= 1
            assert torch.equal(net.refined_logits(k, part, context, logits, flip_other), refined)
            assert not torch.allclose(net.refined_logits(k, part, context, logits, flip_known), refined)
        with pytest.raises(ValueError, match="not refined"):
            net.refined_logits(k, StepPart("a"), context, logits, bits)
        with pytest.raises(ValueError, match="not refined"):
            net.refined_logits(k, StepPart("b", known="a", refine="refine_step2", step=3), context, logits, bits)


@pytest.mark.parametrize("mode,lanes,levels", [("single", 1, 1), ("single", 3, 2), ("dataset", 4, 1),
                                              ("dataset", 2, 2), ("single", 2, 3), ("dataset", 3, 3),
                                              ("single", 2, 4), ("dataset", 3, 5), ("single", 2, 6),
                                              ("dataset", 2, 6)])
def test_arib_round_trip(mode: str, lanes: int, levels: int) -> None:
    nets, multiple = split_nets(levels=levels)
    items = _items(lanes, 13)
    streams, stats = AribCodec(nets, multiple, lanes, mode, threads=2).encode(items)
    nets2, _ = split_nets(levels=levels)
    decoded = AribCodec(nets2, multiple, lanes, mode, threads=1).decode(
        [i.shape for i in items], streams, stats.qp.tolist(), stats.padding_words.tolist())
    for got, want in zip(decoded, items):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("levels", [1, 2, 3, 5, 6])
def test_context_codec_round_trip_and_its_accounting(levels: int) -> None:
    nets, multiple = split_nets("tiny-context", seed=2, scale=0.1, levels=levels)
    items = _items(9, 9)
    codec = PlaneCodec(nets, multiple, 2, threads=1, temperatures=False, corrections=False)  # the model's own
    streams, stats = codec.encode(items)
    for got, want in zip(codec.decode([i.shape for i in items], streams), items):
        np.testing.assert_array_equal(got, want)
    # the quantised cost follows the float cross-entropy: the 1b stage is counted once
    assert stats.quantised_bits.sum() == pytest.approx(stats.theoretical_bits.sum(), rel=0.02)
    assert sum(len(s) for s in streams) * 8 == pytest.approx(stats.quantised_bits.sum(), rel=0.02, abs=400)


@pytest.mark.skipif(not (HAS_TRITON and interpreter_mode()), reason="needs triton and TRITON_INTERPRET=1")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("levels", [5, 6])
def test_round_trip_on_the_triton_path(levels: int) -> None:
    nets, multiple = split_nets("tiny-context", seed=3, scale=0.2, levels=levels)
    items = _items(4, 2)
    codec = PlaneCodec(nets, multiple, 1, threads=1, kernel_path="triton")
    streams, _ = codec.encode(items)
    for got, want in zip(codec.decode([i.shape for i in items], streams), items):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5, 6])
def test_training_cost_is_what_the_coder_is_given(levels: int) -> None:
    nets, _ = split_nets(seed=4, scale=0.2, levels=levels)
    valid = torch.ones(3, 1, 16, 16, dtype=torch.bool)
    valid[1, :, 11:] = False
    x = smooth_images(3, 16, 5) * valid
    rgb = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        coded = torch.zeros(3, dtype=torch.float64)
        for k, stage, _, logits, bits in teacher_forced_steps(nets, x, valid, None, nets.ins.planes):
            coded += theoretical_cost(logits, step_view(bits, stage.s), stage.valid(valid), rgb).double()
        trained = nets.ins.plane_costs(x, valid).sum(dim=1).double()
    torch.testing.assert_close(trained, coded, rtol=1e-4, atol=1e-3)


def test_a_model_grown_into_the_split_config_codes_as_before():
    torch.manual_seed(0)
    base = get_config("tiny")
    sig, ins = build_nets(base)
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn_like(p) * 0.2)
    target, twice, thrice, step2, fourth, steps34 = (split_config(levels=n) for n in (1, 2, 3, 4, 5, 6))
    assert deepening_problem(base, target) is None and deepening_problem(target, twice) is None
    assert deepening_problem(twice, thrice) is None and deepening_problem(thrice, step2) is None
    assert "split_step_2 (True -> False)" in deepening_problem(step2, thrice)
    assert deepening_problem(step2, fourth) is None
    assert "split_step_1a1a (True -> False)" in deepening_problem(fourth, step2)
    assert deepening_problem(step2, steps34) is None
    assert "split_step_3 (True -> False)" in deepening_problem(steps34, step2)
    assert "split_first_step (True -> False)" in deepening_problem(target, base)
    assert "split_step_1a (True -> False)" in deepening_problem(twice, target)
    assert "split_step_1a1 (True -> False)" in deepening_problem(thrice, twice)
    assert "refine_width" in deepening_problem(target, dataclasses.replace(twice, refine_width=16))
    _, grown_ins = deepen(base, (sig, ins), target)
    with torch.no_grad():
        for p in grown_ins.refine.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    _, grown_twice = deepen(target, (sig, grown_ins), twice)
    _, grown_thrice = deepen(twice, (sig, grown_twice), thrice)
    _, grown_step2 = deepen(thrice, (sig, grown_thrice), step2)
    _, grown_fourth = deepen(step2, (sig, grown_step2), fourth)
    _, grown_steps34 = deepen(step2, (sig, grown_step2), steps34)
    x = smooth_images(2, 16, 1)
    with torch.no_grad():
        before = ins.eval().plane_costs(x)
        torch.testing.assert_close(deepen(base, (sig, ins), target)[1].eval().plane_costs(x), before)
        refined = grown_ins.eval().plane_costs(x)
        assert not torch.allclose(refined, before)
        torch.testing.assert_close(grown_twice.eval().plane_costs(x), refined)
        torch.testing.assert_close(grown_thrice.eval().plane_costs(x), refined)
        torch.testing.assert_close(grown_step2.eval().plane_costs(x), refined)
        torch.testing.assert_close(grown_fourth.eval().plane_costs(x), refined)
        torch.testing.assert_close(grown_steps34.eval().plane_costs(x), refined)


def test_train_only_freezes_everything_but_the_named_part():
    nets, _ = split_nets()
    trained = freeze_all_but(nets.ins, "refine")
    names = [n for n, p in nets.ins.named_parameters() if p.requires_grad]
    assert trained == len(names) > 0 and all(".refine." in f".{n}" for n in names)
    with pytest.raises(ValueError, match="no trained parameter"):
        freeze_all_but(nets.ins, "no-such-part")
    with pytest.raises(ValueError, match="no trained parameter has 'refine_step3'"):
        freeze_all_but(nets.ins, "refine,refine_step3")


def test_train_only_takes_a_list_of_parts():
    nets, _ = split_nets(levels=6)
    trained = freeze_all_but(nets.ins, "refine_step3, refine_step4")
    names = [n for n, p in nets.ins.named_parameters() if p.requires_grad]
    assert trained == len(names) > 0
    assert {n.split(".")[0] for n in names} == {"refine_step3", "refine_step4"}


@pytest.mark.parametrize("field,needs", [("split_step_1a", "split_first_step"), ("split_step_1a1", "split_step_1a"),
                                         ("split_step_1a1a", "split_step_1a1")])
def test_a_split_needs_the_split_it_splits(field: str, needs: str) -> None:
    full = split_config(levels=5)
    with pytest.raises(ValueError, match=f"{field} splits .* it needs {needs}$"):
        dataclasses.replace(full, **{needs: False})


def test_both_nets_get_the_model_configs_splits_and_both_check_the_refinement_size() -> None:
    full = split_config(levels=6)
    assert full.sig_net().step_splits() == full.ins_net().step_splits() == full.step_splits()
    assert set(full.step_splits()) == set(SPLIT_FIELDS + REFINE_FIELDS)
    with pytest.raises(ValueError, match="refine_width must be >= 1"):
        dataclasses.replace(full, refine_width=0)
    with pytest.raises(ValueError, match="refine_depth must be >= 0"):
        dataclasses.replace(full.ins_net(), refine_depth=-1)
