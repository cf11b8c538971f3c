"""Saving and loading weights: round trip, hash stability, clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aribbps.config import CONFIGS
from aribbps.errors import ModelLoadError
from aribbps.models import build_nets
from aribbps.weights import load_model, model_hash, save_model, state_tensors, weights_hash

TINY = CONFIGS["tiny"]


def _nets(seed: int = 0, cfg=TINY):
    torch.manual_seed(seed)
    sig, ins = build_nets(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(sig.parameters()) + list(ins.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return sig, ins


def _pth_folder(folder: Path, sig, ins, config_json: str | None) -> Path:
    folder.mkdir()
    torch.save(sig.state_dict(), folder / "sig.pth")
    torch.save(ins.state_dict(), folder / "ins.pth")
    if config_json is not None:
        (folder / "config.json").write_text(config_json)
    return folder


def test_round_trip(tmp_path: Path) -> None:
    sig, ins = _nets()
    path = tmp_path / "m.safetensors"
    digest = save_model(path, TINY, sig, ins)
    cfg, sig2, ins2, digest2 = load_model(path)
    assert cfg == TINY and digest2 == digest == model_hash(sig, ins)
    assert not sig2.training and not ins2.training
    for a, b in ((sig, sig2), (ins, ins2)):
        for (n1, t1), (n2, t2) in zip(a.state_dict().items(), b.state_dict().items()):
            assert n1 == n2 and torch.equal(t1, t2)
    assert all(p.requires_grad for p in sig2.parameters())
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(ins.eval()(x), ins2(x))
    # Loading with the right config given, by object or by name, also works.
    assert load_model(path, TINY)[3] == digest
    assert load_model(path, "tiny")[3] == digest
    # A folder holding model.safetensors.
    (tmp_path / "d").mkdir()
    os.replace(path, tmp_path / "d" / "model.safetensors")
    assert load_model(tmp_path / "d")[3] == digest


def test_hash_is_stable_across_formats(tmp_path: Path) -> None:
    sig, ins = _nets(1)
    digest = save_model(tmp_path / "m.safetensors", TINY, sig, ins)
    folder = _pth_folder(tmp_path / "pth", sig, ins, TINY.to_json())
    cfg, _, _, digest_pth = load_model(folder)
    assert cfg == TINY and digest_pth == digest
    # Saving what was loaded gives the same hash again.
    _, s2, i2, _ = load_model(tmp_path / "m.safetensors")
    assert save_model(tmp_path / "again.safetensors", TINY, s2, i2) == digest
    # Any change of a tensor, or of its name, changes the hash.
    tensors = state_tensors(sig, ins)
    name = sorted(tensors)[3]
    changed = dict(tensors)
    changed[name] = tensors[name].clone()
    changed[name].view(-1)[0] += 1e-3
    assert weights_hash(changed) != digest
    renamed = {("x" + n if n == name else n): t for n, t in tensors.items()}
    assert weights_hash(renamed) != digest
    assert weights_hash(dict(reversed(list(tensors.items())))) == digest


def test_pth_folder_with_config_by_name(tmp_path: Path) -> None:
    sig, ins = _nets(2)
    folder = _pth_folder(tmp_path / "pth", sig, ins, None)
    with pytest.raises(ModelLoadError, match="no config"):
        load_model(folder)
    cfg, _, _, digest = load_model(folder, "tiny")
    assert cfg == TINY and digest == model_hash(sig, ins)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no model"):
        load_model(tmp_path / "absent.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="sig.pth"):
        load_model(tmp_path / "empty", "tiny")


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    sig, ins = _nets(3)
    tensors = state_tensors(sig, ins)
    gone = "ins.context.image_in.bias"
    del tensors[gone]
    tensors["sig.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata={"config": TINY.to_json()})
    with pytest.raises(ModelLoadError, match=r"missing tensors ins\.context\.image_in\.bias.*unexpected tensors sig\.extra\.weight"):
        load_model(path)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    sig, ins = _nets(4)
    tensors = state_tensors(sig, ins)
    tensors["sig.context.down.bias"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata={"config": TINY.to_json()})
    with pytest.raises(ModelLoadError, match=r"sig\.context\.down\.bias.*\(3,\).*\(8,\)"):
        load_model(path)


def test_config_mismatch(tmp_path: Path) -> None:
    sig, ins = _nets(5)
    path = tmp_path / "m.safetensors"
    save_model(path, TINY, sig, ins)
    with pytest.raises(ModelLoadError, match="config mismatch.*name"):
        load_model(path, "small")
    with pytest.raises(ModelLoadError, match="unknown config"):
        load_model(path, "nope")
    folder = _pth_folder(tmp_path / "pth", sig, ins, TINY.to_json())
    with pytest.raises(ModelLoadError, match="config mismatch"):
        load_model(folder, CONFIGS["small"])


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    sig, ins = _nets(6)
    folder = _pth_folder(tmp_path / "pth", sig, ins, CONFIGS["small"].to_json())
    with pytest.raises(ModelLoadError, match="small"):
        load_model(folder)


def test_corrupted_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(garbage)
    sig, ins = _nets(7)
    path = tmp_path / "m.safetensors"
    save_model(path, TINY, sig, ins)
    data = path.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelLoadError):
        load_model(truncated)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # inside the last tensor's bytes
    bad = tmp_path / "f.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ModelLoadError, match="corrupted"):
        load_model(bad)
    (tmp_path / "pth").mkdir()
    (tmp_path / "pth" / "sig.pth").write_bytes(b"not a pickle")
    (tmp_path / "pth" / "ins.pth").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path / "pth", "tiny")
