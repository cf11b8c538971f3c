"""Saving and loading model weights.

Our format is one safetensors file: the SIG net's tensors under ``sig.``, the
INS net's under ``ins.``, and in the metadata the config JSON (``config``),
the format name and version, and the weights hash. Also accepted: a folder
holding ``sig.pth`` and ``ins.pth`` (torch state dicts) with a
``config.json`` or a config given by the caller, or a folder holding
``model.safetensors``.

The weights hash identifies a model in ``.arib`` containers: sha256 over
the tensors in sorted name order (name, dtype, shape, raw little-endian
bytes), so it does not depend on the file format or the order of storage.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from aribbps.atomic import atomic_write_bytes
from aribbps.config import ModelConfig, get_config
from aribbps.errors import ModelLoadError
from aribbps.models.bitplane_net import BitPlaneNet, build_nets

FORMAT_NAME = "aribbps-weights"
FORMAT_VERSION = "1"
#: File name of our format inside a model folder.
WEIGHTS_FILE = "model.safetensors"
PREFIXES = ("sig", "ins")


def state_tensors(sig_net: nn.Module, ins_net: nn.Module) -> dict[str, Tensor]:
    """The tensors of both nets under their ``sig.`` / ``ins.`` names (CPU, contiguous)."""
    out: dict[str, Tensor] = {}
    for prefix, net in zip(PREFIXES, (sig_net, ins_net)):
        for name, t in net.state_dict().items():
            out[f"{prefix}.{name}"] = t.detach().to("cpu").contiguous()
    return out


def weights_hash(tensors: Mapping[str, Tensor]) -> str:
    """sha256 hex digest over ``tensors`` in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        header = json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode()
        data = t.reshape(-1).view(torch.uint8).numpy()
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        h.update(data.nbytes.to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def model_hash(sig_net: nn.Module, ins_net: nn.Module) -> str:
    """The weights hash of a pair of networks in memory."""
    return weights_hash(state_tensors(sig_net, ins_net))


def net_hash(net: nn.Module) -> str:
    """The weights hash of one network (its tensors under their own names)."""
    return weights_hash(net.state_dict())


def save_model(path: str | os.PathLike[str], cfg: ModelConfig, sig_net: nn.Module, ins_net: nn.Module) -> str:
    """Write both nets and ``cfg`` to one safetensors file (atomically).

    Returns:
        The weights hash.
    """
    tensors = state_tensors(sig_net, ins_net)
    digest = weights_hash(tensors)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_json(),
        "weights_sha256": digest,
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return digest


def load_model(
    path_or_dir: str | os.PathLike[str],
    cfg: ModelConfig | str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[ModelConfig, BitPlaneNet, BitPlaneNet, str]:
    """Load a model saved by :func:`save_model`, or a ``sig.pth``/``ins.pth`` folder.

    Args:
        path_or_dir: a safetensors file, or a folder (see the module docstring).
        cfg: the expected config (object, name or JSON path). Required for a
            ``.pth`` folder without ``config.json``; otherwise checked
            against the stored one.
        device: where to put the networks.

    Returns:
        ``(cfg, sig_net, ins_net, weights_hash)``, networks in eval mode.

    Raises:
        ModelLoadError: missing file, unreadable file, missing or unexpected
            tensors, wrong shapes, or a config that does not match.
    """
    path = os.fspath(path_or_dir)
    want = _resolve_config(cfg)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
            stored_cfg, tensors, stored_hash = _read_safetensors(os.path.join(path, WEIGHTS_FILE))
        else:
            stored_cfg, tensors, stored_hash = _read_pth_folder(path)
    elif os.path.isfile(path):
        stored_cfg, tensors, stored_hash = _read_safetensors(path)
    else:
        raise ModelLoadError(f"no model at {path!r}: not a file or folder")
    model_cfg = _reconcile_configs(path, stored_cfg, want)
    digest = weights_hash(tensors)
    if stored_hash is not None and stored_hash != digest:
        raise ModelLoadError(f"{path!r} is corrupted: its tensors do not match the stored hash")
    sig_net, ins_net = _build_loaded(model_cfg, tensors, path, device)
    return model_cfg, sig_net, ins_net, digest


def _resolve_config(cfg: ModelConfig | str | None) -> ModelConfig | None:
    if cfg is None or isinstance(cfg, ModelConfig):
        return cfg
    try:
        return get_config(cfg)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def _reconcile_configs(path: str, stored: ModelConfig | None, wanted: ModelConfig | None) -> ModelConfig:
    if stored is None and wanted is None:
        raise ModelLoadError(
            f"{path!r} holds no config: pass one (a name or a JSON file) or add config.json"
        )
    if stored is not None and wanted is not None and stored != wanted:
        a, b = stored.to_dict(), wanted.to_dict()
        diff = ", ".join(f"{k}: stored {a[k]!r} != given {b[k]!r}" for k in a if a[k] != b[k])
        raise ModelLoadError(f"config mismatch for {path!r}: {diff}")
    result = stored if stored is not None else wanted
    assert result is not None
    return result


def _parse_config(text: str, where: str) -> ModelConfig:
    try:
        return ModelConfig.from_json(text)
    except ValueError as exc:
        raise ModelLoadError(f"bad config in {where!r}: {exc}") from None


def _read_safetensors(path: str) -> tuple[ModelConfig | None, dict[str, Tensor], str | None]:
    """Config (if stored), tensors and stored hash (if any) of a safetensors file."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read weights file {path!r}: {exc}") from None
    fmt = metadata.get("format")
    if fmt is not None and fmt != FORMAT_NAME:
        raise ModelLoadError(f"{path!r} is a {fmt!r} file, not {FORMAT_NAME!r}")
    version = metadata.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path!r} has weights format version {version!r}; this aribbps reads {FORMAT_VERSION!r}"
        )
    cfg = _parse_config(metadata["config"], path) if "config" in metadata else None
    return cfg, tensors, metadata.get("weights_sha256")


def _read_pth_folder(path: str) -> tuple[ModelConfig | None, dict[str, Tensor], None]:
    tensors: dict[str, Tensor] = {}
    for prefix in PREFIXES:
        file = os.path.join(path, f"{prefix}.pth")
        if not os.path.isfile(file):
            raise ModelLoadError(
                f"model folder {path!r} has neither {WEIGHTS_FILE} nor {prefix}.pth"
            )
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise ModelLoadError(f"cannot read {file!r}: {exc}") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ModelLoadError(f"{file!r} is not a state dict of tensors")
        tensors.update({f"{prefix}.{name}": t for name, t in state.items()})
    cfg_file = os.path.join(path, "config.json")
    cfg = None
    if os.path.isfile(cfg_file):
        with open(cfg_file, encoding="utf-8") as f:
            cfg = _parse_config(f.read(), cfg_file)
    return cfg, tensors, None


def _name_some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _build_loaded(
    cfg: ModelConfig, tensors: Mapping[str, Tensor], path: str, device: torch.device | str
) -> tuple[BitPlaneNet, BitPlaneNet]:
    """Build the nets without initialising them and move the tensors in."""
    with torch.device("meta"):
        sig_net, ins_net = build_nets(cfg)
    expected = {
        f"{prefix}.{name}": t
        for prefix, net in zip(PREFIXES, (sig_net, ins_net))
        for name, t in net.state_dict().items()
    }
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_name_some(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_name_some(unexpected)}")
        raise ModelLoadError(
            f"weights in {path!r} do not fit config {cfg.name!r}: " + "; ".join(parts)
        )
    for name, ref in expected.items():
        got = tensors[name]
        if got.shape != ref.shape:
            raise ModelLoadError(
                f"tensor {name} in {path!r} has shape {tuple(got.shape)}, "
                f"config {cfg.name!r} needs {tuple(ref.shape)}"
            )
        if not got.is_floating_point():
            raise ModelLoadError(f"tensor {name} in {path!r} has dtype {got.dtype}, expected a float")
    for prefix, net in zip(PREFIXES, (sig_net, ins_net)):
        state = {
            name: tensors[f"{prefix}.{name}"].to(device=device, dtype=ref.dtype)
            for name, ref in net.state_dict().items()
        }
        net.load_state_dict(state, strict=True, assign=True)
        net.eval()
    return sig_net, ins_net
