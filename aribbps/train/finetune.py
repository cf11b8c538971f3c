"""qp lists for ``--mode finetune``: ``python -m aribbps.train generate-finetune``.

In single-image mode the codec picks each image's latent precision ``qp``
from the bits its own insignificant planes put on the stack (the *initial
bits*): ``qp = clamp(floor(initial_bits / latent_dims), 1, 10)``
(:func:`aribbps.arib.choose_qp`, DESIGN.md 1.6). Fine-tuning (DESIGN.md 1.7)
trains the SIG net and its latent model with the discretisation each image
will meet, so it needs that qp for every training image: the *qp list*,
made once from the trained model (its INS net decides the initial bits)::

    trained model ─► INS planes of every image, teacher forced, pushed onto
                     a fresh rANS lane (AribCodec.initial_qp: the encoder's
                     own code) ─► choose_qp(lane bits, latent dims of the
                     padded size) ─► {image name: qp} ─► qp_list.json

The list is keyed by the data set's item names (:mod:`aribbps.datasets`:
paths relative to the data folder, ``data_batch_1/00042`` for CIFAR-10),
so it does not depend on the order of the files; the trainer looks every
training and validation image up by name.

File format (JSON, UTF-8)::

    {"format": "aribbps-qp-list", "version": 1,
     "model": "tiny", "weights_sha256": "ab12...", "ins_sha256": "cd34...",
     "pad_multiple": 8,
     "dataset_type": "filedataset", "images": 2,
     "qp": {"a.png": 7, "b.png": 10}}

:func:`read_qp_list` also takes a plain JSON object ``{"name": qp, ...}``
and text files with one ``name<TAB>qp`` per line.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from aribbps.arib import AribCodec
from aribbps.atomic import atomic_write_bytes
from aribbps.datasets import Item, dataset_names, open_dataset
from aribbps.errors import AribError
from aribbps.latent_math import LATENT_MAX_QP, LATENT_MIN_QP
from aribbps.tiling import padded_size
from aribbps.weights import net_hash
from aribbps.zoo import LoadedModel, load

QP_LIST_FILE = "qp_list.json"
QP_LIST_FORMAT = "aribbps-qp-list"
QP_LIST_VERSION = 1
#: The qp range a list may hold: the decoder's (choose_qp gives QP_MIN..QP_MAX = 1..10).
QP_LIST_MIN, QP_LIST_MAX = LATENT_MIN_QP, LATENT_MAX_QP


class QpListError(AribError, ValueError):
    """A qp list is missing, malformed, or lacks an image."""


@dataclass
class QpList:
    """A qp list: image name -> qp, plus which model made it (None if unknown).

    ``ins_sha256`` is the hash of the INS net alone (:func:`aribbps.weights.net_hash`):
    the qp depends on the INS net (its bits are the initial bits) and on
    the config's latent geometry (``model``, the config name), not on the
    SIG net, so a list stays right for any SIG net trained beside it.
    """

    qp: dict[str, int]
    model: str | None = None
    weights_sha256: str | None = None
    ins_sha256: str | None = None

    def lookup(self, names: list[str] | tuple[str, ...]) -> list[int]:
        """The qp of every name, in order.

        Raises:
            QpListError: naming the first name the list lacks.
        """
        try:
            return [self.qp[n] for n in names]
        except KeyError as exc:
            raise QpListError(self.missing_message(str(exc.args[0]))) from None

    def check_covers(self, names: list[str]) -> None:
        """Raise :class:`QpListError` naming the first of ``names`` not in the list.

        Names in the list but not in ``names`` are fine (a list made for a
        bigger set).
        """
        for name in names:
            if name not in self.qp:
                missing = sum(1 for n in names if n not in self.qp)
                raise QpListError(self.missing_message(name, missing))

    @staticmethod
    def missing_message(name: str, count: int = 1) -> str:
        more = f" ({count} images are missing)" if count > 1 else ""
        return (
            f"the qp list has no entry for image {name!r}{more}; make it for this data set with "
            "'python -m aribbps.train generate-finetune' (same --data_dir and --dataset_type)"
        )


def resolve_qp_path(qp_path: str | os.PathLike[str] | None, folder: str | os.PathLike[str]) -> Path:
    """Where a qp list is: ``folder/qp_list.json`` by default; a relative
    ``qp_path`` is relative to ``folder`` (the data folder, as in the paper
    code's ``--qp_path``), an absolute one is taken as it is."""
    if qp_path is None:
        return Path(folder) / QP_LIST_FILE
    p = Path(qp_path)
    return p if p.is_absolute() else Path(folder) / p


def read_qp_list(path: str | os.PathLike[str]) -> QpList:
    """Read a qp list (module docstring for the formats).

    Raises:
        QpListError: missing or unreadable file, bad format, or a qp that
            is not an integer in [QP_LIST_MIN, QP_LIST_MAX] = [1, 16].
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QpListError(
            f"qp list {str(p)!r} does not exist; write it with 'python -m aribbps.train generate-finetune' "
            "(a relative --qp_path is relative to --data_dir)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QpListError(f"cannot read qp list {str(p)!r}: {exc}") from None
    model = weights = ins = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QpListError(f"qp list {str(p)!r} is not valid JSON: {exc}") from None
        if "format" in data:
            if data.get("format") != QP_LIST_FORMAT or not isinstance(data.get("qp"), dict):
                raise QpListError(f"{str(p)!r} is not an aribbps qp list (format {data.get('format')!r})")
            if data.get("version") != QP_LIST_VERSION:
                raise QpListError(f"qp list {str(p)!r} has version {data.get('version')!r}; "
                                  f"expected {QP_LIST_VERSION}")
            model, raw = data.get("model"), data["qp"]
            weights, ins = _hash_field(p, data, "weights_sha256"), _hash_field(p, data, "ins_sha256")
        else:
            raw = data
        entries = list(raw.items())
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, sep, value = line.rstrip("\r\n").rpartition("\t")
            if not sep:
                raise QpListError(f"qp list {str(p)!r} line {number}: expected 'name<TAB>qp', got {line!r}")
            entries.append((name, value))
    qp: dict[str, int] = {}
    for name, value in entries:
        try:
            q = int(value)
        except (TypeError, ValueError):
            q = None
        if q is None or isinstance(value, (bool, float)) or not QP_LIST_MIN <= q <= QP_LIST_MAX:
            raise QpListError(
                f"qp list {str(p)!r}: image {name!r} has qp {value!r}; expected an integer in "
                f"[{QP_LIST_MIN}, {QP_LIST_MAX}]"
            )
        qp[str(name)] = q
    if not qp:
        raise QpListError(f"qp list {str(p)!r} is empty")
    return QpList(qp, model, weights, ins)


def _hash_field(path: Path, data: Mapping[str, object], key: str) -> str | None:
    """An optional sha256 hex digest of a qp list (None when absent)."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise QpListError(f"qp list {str(path)!r}: {key} must be a sha256 hex digest, got {value!r}")
    return value


def write_qp_list(path: str | os.PathLike[str], qp: Mapping[str, int], model: LoadedModel,
                  dataset_type: str) -> Path:
    """Write a qp list as JSON, atomically (names sorted; missing folders are made)."""
    data = {
        "format": QP_LIST_FORMAT,
        "version": QP_LIST_VERSION,
        "model": model.name,
        "weights_sha256": model.weights_hash.hex(),
        "ins_sha256": net_hash(model.nets.ins),
        "pad_multiple": model.cfg.pad_multiple,
        "dataset_type": dataset_type,
        "images": len(qp),
        "qp": {name: int(qp[name]) for name in sorted(qp)},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


def _groups(dataset: Dataset[Item], multiple: int, batch_size: int
            ) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Items of equal padded size, in batches of at most ``batch_size`` (data set order within a size)."""
    pending: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = {}
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, name = dataset[index]
        key = padded_size(int(image.shape[1]), int(image.shape[2]), multiple)
        group = pending.setdefault(key, [])
        group.append((name, image.numpy()))
        if len(group) == batch_size:
            yield pending.pop(key)
    yield from pending.values()


def compute_qp(dataset: Dataset[Item], model: LoadedModel, batch_size: int = 16,
               progress: Callable[[int], None] | None = None) -> dict[str, tuple[int, float]]:
    """Single-image mode's qp of every image of ``dataset``: name -> (qp, initial bits).

    Each image is padded as the codec pads it alone (edge pixels, to the
    model's ``pad_multiple``) and its insignificant planes are pushed onto
    a lane of its own (:meth:`aribbps.arib.AribCodec.initial_qp`). Images
    of equal padded size share a network batch of up to ``batch_size``;
    ``batch_size=1`` evaluates the nets on exactly the batches the encoder
    uses for one image. (A larger batch can round a float differently
    inside a convolution; that moves the initial bits by a fraction of a
    bit at most, so it changes a qp only at the exact boundary.)
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if model.nets.sig.latent is None:
        raise AribError(f"model {model.name!r} has no latent model (use_latent=false): there is nothing to fine-tune")
    codec = AribCodec(model.nets, model.cfg.pad_multiple, batch_size, "single", model.device)
    out: dict[str, tuple[int, float]] = {}
    for group in _groups(dataset, codec.multiple, batch_size):  # the codec's multiple: rounds pad to it
        bits, qp = codec.initial_qp([image for _, image in group])
        for (name, _), q, b in zip(group, qp, bits):
            out[name] = (int(q), float(b))
        if progress is not None:
            progress(len(group))
    return out


def export_cifar10_pngs(dataset: Dataset[Item], data_dst: Path) -> Dataset[Item]:
    """Write CIFAR-10 items as ``data_dst/data_batch_1/00042.png`` (an imagefolder) and open that."""
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, name = dataset[index]
        target = data_dst / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image.numpy().transpose(1, 2, 0))).save(target)
    return open_dataset("imagefolder", data_dst)


@dataclass
class GenerateResult:
    path: Path  # the qp list written
    data_dir: Path  # the data set it is keyed for (--data_dst for CIFAR-10 with --data_dst)
    dataset_type: str  # ... and its type
    qp: dict[str, int]


def generate_finetune(data_dir: str | os.PathLike[str], dataset_type: str, model: LoadedModel | str | None,
                      data_dst: str | os.PathLike[str] | None = None, qp_path: str | os.PathLike[str] | None = None,
                      batch_size: int = 16, device: str | None = "cpu",
                      progress: Callable[[int], None] | None = None) -> GenerateResult:
    """Write the qp list of a data set (what ``generate-finetune`` does).

    Args:
        data_dir, dataset_type: the training set, as given to the trainer
            (CIFAR-10: its 50 000 training images).
        model: the trained model (a :class:`LoadedModel`, a model path, or
            None for the shipped default).
        data_dst: where to write the list (default ``data_dir``). For
            ``cifar10`` the images are also written there as PNG files,
            ``data_dst/data_batch_1/00042.png``, and the list is keyed by
            those names: train with ``--dataset_type imagefolder --data_dir
            DATA_DST``. (Without ``data_dst`` a CIFAR-10 list is keyed by
            the batch names and works with ``--dataset_type cifar10``.)
        qp_path: the list's file; relative to ``data_dst`` (or
            ``data_dir``); default ``qp_list.json``.
        batch_size: images per network batch (see :func:`compute_qp`).
        device: where the nets run, when ``model`` is not loaded yet.

    Raises:
        AribError: unreadable data set or model, a model without latent model.
    """
    loaded = model if isinstance(model, LoadedModel) else load(model, device)
    if loaded.nets.sig.latent is None:
        raise AribError(f"model {loaded.name!r} has no latent model (use_latent=false): there is nothing to fine-tune")
    dataset: Dataset[Item] = open_dataset(dataset_type, data_dir, split="train")
    out_dir = Path(data_dst) if data_dst is not None else Path(data_dir)
    kind, keyed_dir = dataset_type, Path(data_dir)
    if data_dst is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if dataset_type == "cifar10":
            dataset, kind, keyed_dir = export_cifar10_pngs(dataset, out_dir), "imagefolder", out_dir
    found = compute_qp(dataset, loaded, batch_size, progress)
    qp = {name: q for name, (q, _) in found.items()}
    assert set(qp) == set(dataset_names(dataset))
    path = write_qp_list(resolve_qp_path(qp_path, out_dir), qp, loaded, kind)
    return GenerateResult(path, keyed_dir, kind, qp)
