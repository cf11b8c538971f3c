"""Lane groups (aribbps.lane_groups): codecs run concurrently on disjoint lanes and items."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from aribbps import api, lane_groups, zoo
from aribbps.arib import AribCodec
from aribbps.container import decode_archive, encode_archive
from aribbps.errors import ArchiveError, AribError, ChecksumError
from aribbps.imageio import LoadedImage
from aribbps.lane_groups import EXTRA_KEY, plan_groups, recorded_groups, run_groups


@pytest.fixture(scope="module")
def tiny_model(trained_model_file):
    return zoo.load(trained_model_file)


def test_plan_groups_shares_items_and_lanes() -> None:
    groups = plan_groups(7, 5, 2)
    assert [g.items for g in groups] == [[0, 2, 4, 6], [1, 3, 5]]
    assert [(g.first_lane, g.lanes) for g in groups] == [(0, 3), (3, 2)]
    assert len(plan_groups(1, 8, 2)) == 1  # never more groups than items
    assert len(plan_groups(9, 2, 4)) == 2  # or lanes
    with pytest.raises(ValueError):
        plan_groups(3, 2, 0)


def test_recorded_groups_are_checked() -> None:
    assert recorded_groups({}, 4, 4) == 1
    assert recorded_groups({EXTRA_KEY: 2}, 4, 4) == 2
    for bad in (0, 5, True, "2", 1.5):
        with pytest.raises(ValueError, match="lane group count"):
            recorded_groups({EXTRA_KEY: bad}, 4, 4)


def _images(n: int, seed: int = 0) -> list[LoadedImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (16, 16) if i % 3 else (12, 20)
        y, x = np.mgrid[0:h, 0:w]
        base = (x * rng.uniform(-6, 6) + y * rng.uniform(-6, 6) + rng.uniform(60, 190))[..., None]
        px = np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(LoadedImage(f"img_{i}.png", "PNG", "RGB", px))
    return out


@pytest.mark.parametrize("mode", ["single", "dataset"])
def test_two_groups_round_trip_and_equal_separate_codecs(tiny_model, mode: str) -> None:
    """Each group codes exactly what a codec of its own lanes and items would."""
    images = _images(5)
    result = api.encode_images(images, tiny_model, lanes=4, tile=0, mode=mode, lane_groups=2)
    archive = decode_archive(result.data)
    assert archive.extra[EXTRA_KEY] == 2 and archive.lanes == 4
    decoded = api.decode_archive_images(archive, tiny_model)
    assert all(np.array_equal(d.pixels, im.pixels) for d, im in zip(decoded, images))
    for g, first, lanes in ((0, 0, 2), (1, 2, 2)):
        ids = list(range(g, 5, 2))  # the items' indices in the archive name them in the lane seals
        alone, _ = AribCodec(tiny_model.nets, tiny_model.cfg.pad_multiple, lanes, mode).encode(
            [np.ascontiguousarray(images[i].pixels.transpose(2, 0, 1)) for i in ids], ids=ids)
        assert alone == archive.lane_streams[first:first + lanes]
    single = api.encode_images(images, tiny_model, lanes=4, tile=0, mode=mode, lane_groups=1)
    assert EXTRA_KEY not in decode_archive(single.data).extra
    assert result.theoretical_bits == pytest.approx(single.theoretical_bits, rel=1e-3)


def test_a_wrong_group_count_is_refused(tiny_model) -> None:
    result = api.encode_images(_images(4), tiny_model, lanes=2, tile=0, mode="dataset", lane_groups=2)
    archive = decode_archive(result.data)
    archive.extra[EXTRA_KEY] = 1  # a forged header: the lanes no longer split as encoded
    with pytest.raises((ArchiveError, ChecksumError)):
        api.decode_archive_images(decode_archive(encode_archive(archive)), tiny_model)
    archive.extra[EXTRA_KEY] = 3
    with pytest.raises(ArchiveError, match="lane group count 3"):
        api.decode_archive_images(decode_archive(encode_archive(archive)), tiny_model)
    with pytest.raises(AribError, match="at least 1"):
        api.encode_images(_images(2), tiny_model, lane_groups=0)


def _slow_work(calls: list[int], fail_group: int | None = None):
    """A fake group run: 200 rounds of 5 ms, reporting after each; ``fail_group`` fails at once."""
    def work(index: int, group, report) -> int:
        if index == fail_group:
            raise ValueError("group failed")
        for _ in range(200):
            time.sleep(0.005)
            report(1)
            calls[index] += 1
        return index
    return work


def test_a_failing_group_stops_the_others() -> None:
    calls = [0, 0, 0]
    groups = plan_groups(6, 3, 3)
    with pytest.raises(ValueError, match="group failed"):
        run_groups(_slow_work(calls, fail_group=1), groups, torch.device("cpu"))
    assert calls[1] == 0 and 0 <= calls[0] < 200 and 0 <= calls[2] < 200
    done: list[int] = []
    assert run_groups(_slow_work([0, 0, 0]), groups, torch.device("cpu"), done.append) == [0, 1, 2]
    assert sum(done) == 600


def test_an_interrupt_stops_every_group_within_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_wait(futures, return_when):
        time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(lane_groups, "wait", interrupted_wait)
    calls = [0, 0]
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_groups(_slow_work(calls), plan_groups(4, 2, 2), torch.device("cpu"))
    assert max(calls) < 100 and time.perf_counter() - start < 0.5


@pytest.mark.parametrize("key, value", [("qp", 2**64 - 1), ("qp", -1), ("qp", 17), ("pad", [2**64 - 1])])
def test_hostile_side_info_is_an_archive_error(tiny_model, key: str, value: object) -> None:
    """qp and padding counts behind a valid CRC: any integer is refused cleanly (no OverflowError)."""
    result = api.encode_images(_images(2), tiny_model, lanes=2, tile=0, mode="dataset", lane_groups=1)
    archive = decode_archive(result.data)
    if key == "qp":
        archive.extra["qp"] = value
    else:
        archive.images[0].extra["pad"] = value
    with pytest.raises(ArchiveError):
        api.decode_archive_images(decode_archive(encode_archive(archive)), tiny_model)
