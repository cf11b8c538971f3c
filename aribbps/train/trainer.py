"""The training loop: data, optimizer, validation, checkpoints, DDP.

One process::

    python -m aribbps.train --mode ins --config small-context \\
        --dataset_type filedataset --data_dir patches/ --save_dir runs/ins

Several (one per GPU, or CPU processes with gloo)::

    torchrun --standalone --nproc_per_node 4 -m aribbps.train --mode ins ...

From Python: ``train(TrainOptions(...))``; ``launch(options, n)`` starts
``n`` processes itself (what ``--num_gpus`` does without torchrun).

Every process builds the same model (same seed), reads its own shard of each
epoch (a :class:`ResumableSampler`: a ``DistributedSampler`` whose order is
a function of ``(seed, epoch)`` only), and DDP averages the gradients. Only
rank 0 (the "master") writes logs, checkpoints and model files.

Resuming continues exactly: a checkpoint holds every module, the optimizer,
the lr schedule, the iteration, the epoch and how many of its batches were
used, and the RNG states of every rank; on CPU, N steps + resume + M steps
give bit-identical weights to N+M steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from aribbps.atomic import atomic_write_bytes
from aribbps.config import ModelConfig, get_config
from aribbps.datasets import (
    DATASET_KINDS,
    Item,
    TrainingView,
    dataset_names,
    image_sizes,
    list_batch,
    open_dataset,
    split_indices,
    stack_batch,
)
from aribbps.errors import AribError, ModelLoadError
from aribbps.models import BitPlaneNet, build_nets
from aribbps.models.deepen import deepen, deepening_problem
from aribbps.train.finetune import QpList, read_qp_list, resolve_qp_path
from aribbps.train.objectives import (
    NEEDS_QP_LIST,
    ModeUnavailable,
    Objective,
    build_objective,
    check_mode_available,
    keep_logits_float32,
)
from aribbps.train.presets import MODES
from aribbps.train.size_batches import SizeGroupedBatches
from aribbps.train.weight_average import WeightAverage
from aribbps.weights import load_model, model_hash, net_hash, save_model

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "aribbps-train-checkpoint"
CHECKPOINT_VERSION = 1
LOG_FILE = "train.log"


class TrainingError(AribError):
    """Training cannot go on: diverged, or a checkpoint that does not fit."""


@dataclass
class TrainOptions:
    """Everything a training run needs (the CLI's options, resolved).

    Sizes are per process: ``batch_size`` is what each process reads per
    step (the paper table's "bs" divided by the number of processes).
    """

    mode: str  # sig | ins | finetune
    data_dir: str
    save_dir: str
    config: str | None = None  # name or JSON file; None = from --init or --resume
    dataset_type: str = "filedataset"  # cifar10 | imagefolder | filedataset
    valid_num: int = 0  # validation images (0 = no validation)
    valid_select: str = "last"  # last N images, or "hash": N chosen by name
    dropout: float = 0.0
    lr: float = 2e-4
    batch_size: int = 16  # per process
    num_iters: int = 100_000
    log_interval: int = 100
    valid_interval: int = 1_000  # also the checkpoint interval
    decay_rate: float = 1.0  # lr *= decay_rate every decay_interval iterations
    decay_interval: int = 1_000
    resume: str | None = None  # checkpoint file, or a folder holding checkpoint.pt
    #: With resume: go on at this learning rate (times the decay the schedule has reached) instead of
    #: the checkpoint's, e.g. to anneal a long run. None = the checkpoint's.
    resume_lr: float | None = None
    init: str | None = None  # model file: starting weights of both nets
    qp_path: str | None = None  # finetune only: qp list (relative: to data_dir)
    random_crop: int = 0  # 0 = whole images (cut to the pad multiple)
    #: Group training batches by image size, each about this many pixels
    #: (0 = batches of batch_size images, all of one size).
    batch_pixels: int = 0
    hflip: bool = False
    #: Iterations over which the latent bits' weight in the loss rises
    #: linearly from 0 to 1 (0 = weight 1 throughout). Counters posterior
    #: collapse; sig and finetune modes with a latent model only.
    kl_warmup: int = 0
    #: Decay of an exponential moving average of the trained weights (0 =
    #: none). With it, validation and the exported models use the average.
    ema: float = 0.0
    #: Train only the parameters of the trained nets whose names contain
    #: this (e.g. "refine"); the others stay frozen. None = all of them.
    train_only: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bfloat16 autocast (CUDA only); weights stay float32
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    debug_dir: str | None = None  # tests: each rank writes rank<r>.json (weights hash, files written)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    iterations: int
    best_valid_bpsp: float | None
    best_path: Path | None
    final_path: Path
    checkpoint_path: Path


# --- options -----------------------------------------------------------------

def check_options(opts: TrainOptions) -> None:
    """Raise ValueError naming the first bad option."""
    if opts.mode not in MODES:
        raise ValueError(f"unknown mode {opts.mode!r}; choose one of {', '.join(MODES)}")
    if opts.dataset_type not in DATASET_KINDS:
        raise ValueError(f"unknown dataset type {opts.dataset_type!r}; choose one of {', '.join(DATASET_KINDS)}")
    if not opts.data_dir:
        raise ValueError("--data_dir is required")
    if not os.path.isdir(opts.data_dir):
        raise ValueError(f"data folder {opts.data_dir!r} does not exist")
    positive = ("batch_size", "num_iters", "log_interval", "valid_interval", "decay_interval")
    for name in positive:
        if getattr(opts, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(opts, name)!r}")
    if opts.valid_num < 0 or opts.random_crop < 0 or opts.workers < 0 or opts.batch_pixels < 0:
        raise ValueError("--valid_num, --random-crop, --batch-pixels and --workers must be >= 0")
    if not 0.0 <= opts.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {opts.dropout!r}")
    if opts.resume_lr is not None and (opts.resume is None or not opts.resume_lr > 0):
        raise ValueError(f"resume_lr needs resume and must be > 0, got {opts.resume_lr!r}")
    if not opts.lr > 0 or not opts.decay_rate > 0:
        raise ValueError(f"--lr and --decay_rate must be > 0, got {opts.lr!r} and {opts.decay_rate!r}")
    if opts.kl_warmup < 0:
        raise ValueError(f"--kl_warmup must be >= 0, got {opts.kl_warmup!r}")
    if opts.kl_warmup and opts.mode == "ins":
        raise ValueError("--kl_warmup applies to the latent model: --mode sig or finetune")
    if not 0.0 <= opts.ema < 1.0:
        raise ValueError(f"--ema must be in [0, 1), got {opts.ema!r}")
    if opts.valid_select not in ("last", "hash"):
        raise ValueError(f"--valid-select must be 'last' or 'hash', got {opts.valid_select!r}")
    if opts.qp_path is not None and opts.mode != "finetune":
        raise ValueError("--qp_path is only used by --mode finetune")
    if opts.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {opts.device!r}")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if opts.amp and resolve_device_kind(opts.device) != "cuda":
        raise ValueError("--amp needs a CUDA device (mixed precision is not used on CPU)")
    if opts.resume is None and opts.init is None and opts.config is None:
        raise ValueError("--config is required (a name or a JSON file), unless --init or --resume gives it")


def resolve_device_kind(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- distributed ---------------------------------------------------------------

def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group that torchrun (or :func:`launch`) described.

    Without the torchrun environment (``RANK``/``WORLD_SIZE``) this is one
    process and no group is made. NCCL on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def _all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if info.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _spawned(local_rank: int, opts: TrainOptions, nprocs: int) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nprocs))
    train(opts)


def launch(opts: TrainOptions, nprocs: int, master_port: int = 29500) -> None:
    """Run :func:`train` in ``nprocs`` local processes (like the paper's ``--num_gpus``).

    torchrun does the same and more (restarts, several machines); this is for
    a plain ``python -m aribbps.train --num_gpus N``.
    """
    check_options(opts)  # fail here, not in every child
    if nprocs <= 1:
        train(opts)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: one thread per process
    os.environ["MASTER_PORT"] = str(master_port)
    torch.multiprocessing.spawn(_spawned, args=(opts, nprocs), nprocs=nprocs, join=True)


# --- data ----------------------------------------------------------------------

class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can start part-way into an epoch.

    The order of epoch ``e`` is a function of ``(seed, e)``; :attr:`start`
    skips the first indices of this rank's shard (the batches a resumed run
    already used), without loading them.
    """

    def __init__(self, dataset: Dataset[Item], info: DistInfo, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def _loader(dataset: Dataset[Item], batch_size: int, opts: TrainOptions, **kw: Any) -> DataLoader:
    # A private generator: iterating a DataLoader draws its worker base seed
    # from it, not from the global RNG that dropout uses (exact resume).
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=opts.workers,
        pin_memory=resolve_device_kind(opts.device) == "cuda",
        generator=torch.Generator().manual_seed(opts.seed), **kw,
    )


class _Data:
    """Training batches (with their epoch position) and this rank's validation shard."""

    def __init__(self, opts: TrainOptions, cfg: ModelConfig, info: DistInfo) -> None:
        base = open_dataset(opts.dataset_type, opts.data_dir, split="train")
        names = dataset_names(base)
        train_idx, valid_idx = split_indices(names, opts.valid_num, opts.valid_select)
        self.names = [names[i] for i in train_idx] + [names[i] for i in valid_idx]
        self.train_view = TrainingView(
            Subset(base, train_idx), cfg.pad_multiple, opts.random_crop, random=True,
            hflip=opts.hflip, seed=opts.seed,
        )
        self.sampler: ResumableSampler | SizeGroupedBatches
        if opts.batch_pixels:
            sizes = [self.train_view.item_size(s) for s in image_sizes(self.train_view.base)]
            self.sampler = SizeGroupedBatches(sizes, opts.batch_pixels, info.rank, info.world_size, opts.seed)
            self.items_per_start = 1  # its start counts batches
            batches_per_epoch = len(self.sampler)
            self.loader = _loader(self.train_view, 1, opts, batch_sampler=self.sampler, collate_fn=stack_batch)
        else:
            self.sampler = ResumableSampler(self.train_view, info, opts.seed)
            self.items_per_start = opts.batch_size  # its start counts images
            batches_per_epoch = self.sampler.num_samples // opts.batch_size
            self.loader = _loader(self.train_view, opts.batch_size, opts, sampler=self.sampler,
                                  drop_last=True, collate_fn=stack_batch)
        if batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(train_idx)} images, too few for one batch on each of "
                f"{info.world_size} processes; lower --batch_size (or --batch-pixels) or --valid_num"
            )
        valid_view = TrainingView(Subset(base, valid_idx), cfg.pad_multiple, opts.random_crop, random=False)
        shard = list(range(info.rank, len(valid_idx), info.world_size))
        self.valid_loader = _loader(Subset(valid_view, shard), opts.batch_size, opts,
                                    shuffle=False, collate_fn=list_batch)
        self.valid_num = len(valid_idx)
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of `epoch` already used

    def batches(self) -> Iterator[tuple[Tensor, list[str]]]:
        """Training batches ``(x, names)``, forever, continuing from the epoch position."""
        while True:
            self.sampler.set_epoch(self.epoch)
            self.train_view.set_epoch(self.epoch)
            self.sampler.start = self.batch_in_epoch * self.items_per_start
            for x, names in self.loader:
                self.batch_in_epoch += 1
                yield x, names
            self.epoch += 1
            self.batch_in_epoch = 0


def _same_shape_groups(images: list[Tensor], names: Sequence[str], limit: int
                       ) -> Iterator[tuple[Tensor, list[str]]]:
    """Consecutive images of equal size, stacked, at most ``limit`` per batch, with their names."""
    group: list[Tensor] = []
    group_names: list[str] = []
    for image, name in zip(images, names):
        if group and (image.shape != group[0].shape or len(group) == limit):
            yield torch.stack(group), group_names
            group, group_names = [], []
        group.append(image)
        group_names.append(name)
    if group:
        yield torch.stack(group), group_names


# --- model ---------------------------------------------------------------------

class _LossModule(nn.Module):
    """What DDP wraps: the trained modules, forward = the objective's loss."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.trained = nn.ModuleDict(objective.trained())
        self.objective = objective  # a plain object: not registered

    def forward(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective.loss(x, names)


def freeze_all_but(module: nn.Module, part: str) -> int:
    """Stops gradients for every parameter of ``module`` whose name contains none
    of the comma-separated names in ``part``.

    Returns:
        How many parameter tensors still train.

    Raises:
        ValueError: a name of ``part`` is in no parameter's name.
    """
    wanted = [p.strip() for p in part.split(",") if p.strip()]
    unmatched = [w for w in wanted if not any(w in name for name, _ in module.named_parameters())]
    if not wanted or unmatched:
        missing = ", ".join(repr(w) for w in unmatched) or repr(part)
        raise ValueError(f"--train-only {part!r}: no trained parameter has {missing} in its name")
    kept = 0
    for name, param in module.named_parameters():
        keep = any(w in name for w in wanted)
        param.requires_grad_(keep)
        kept += keep
    return kept


def _build_nets(
    opts: TrainOptions, cfg: ModelConfig, device: torch.device,
    init: tuple[BitPlaneNet, BitPlaneNet] | None,
) -> tuple[BitPlaneNet, BitPlaneNet]:
    """Fresh nets (seeded: the same on every rank), with ``init``'s weights if given."""
    torch.manual_seed(opts.seed)
    sig, ins = build_nets(cfg, opts.dropout)
    if init is not None:
        sig.load_state_dict(init[0].state_dict())
        ins.load_state_dict(init[1].state_dict())
    return sig.to(device), ins.to(device)


def _resolve_model(
    opts: TrainOptions, checkpoint: Mapping[str, Any] | None
) -> tuple[ModelConfig, tuple[BitPlaneNet, BitPlaneNet] | None]:
    """The config, and the ``--init`` nets (not read when resuming: the checkpoint has the weights)."""
    given = get_config(opts.config) if opts.config is not None else None
    if checkpoint is not None:
        stored = ModelConfig.from_dict(checkpoint["config"])
        if given is not None and given != stored:
            raise ValueError(
                f"--config {opts.config!r} differs from the config {stored.name!r} of the checkpoint; "
                "leave --config out when resuming"
            )
        return stored, None
    if opts.init is not None:
        try:
            cfg, sig, ins, _ = load_model(opts.init)
        except ModelLoadError:
            if given is None:
                raise
            # A sig.pth/ins.pth folder without config.json: the config is --config's.
            cfg, sig, ins, _ = load_model(opts.init, given)
        if given is None or given == cfg:
            return cfg, (sig, ins)
        problem = deepening_problem(cfg, given)
        if problem is not None:
            raise ValueError(f"--config {opts.config!r} does not fit --init {opts.init!r} (config {cfg.name!r}): "
                             f"{problem}")
        return given, deepen(cfg, (sig, ins), given, opts.seed)
    assert given is not None
    return given, None


def _qp_list(opts: TrainOptions) -> QpList:
    """``--mode finetune``'s qp list (``--qp_path``, relative to ``--data_dir``), and its start model."""
    if opts.qp_path is None:
        raise ModeUnavailable(NEEDS_QP_LIST)
    if opts.init is None and opts.resume is None:
        raise ModeUnavailable(
            "--mode finetune starts from a trained model: pass --init MODEL (the model the qp list "
            "was made with), or --resume"
        )
    return read_qp_list(resolve_qp_path(opts.qp_path, opts.data_dir))


# --- checkpoints -----------------------------------------------------------------

def _rng_state(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or the ``checkpoint.pt`` in a folder."""
    p = Path(path)
    return p / CHECKPOINT_FILE if p.is_dir() else p


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint onto the CPU (tensors only: no code is unpickled)."""
    p = checkpoint_path(path)
    if not p.is_file():
        raise ValueError(f"no checkpoint at {str(path)!r}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(f"cannot read checkpoint {str(p)!r}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(p)!r} is not an aribbps training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{str(p)!r} has checkpoint version {ckpt.get('version')!r}; expected {CHECKPOINT_VERSION}")
    return ckpt


# --- logging ----------------------------------------------------------------------

class _Log:
    """Rank 0's outputs: train.log, stdout, TensorBoard (if installed), tqdm."""

    def __init__(self, save_dir: Path, start: int, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        self.file = None
        self.bar = None
        if not enabled:
            return
        self.file = open(save_dir / LOG_FILE, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: text log only
            pass
        else:
            self.writer = SummaryWriter(str(save_dir / "tb"))
        self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        assert self.file is not None and self.bar is not None
        self.file.write(text + "\n")
        self.file.flush()
        self.bar.write(text, file=sys.stdout)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def step(self, bpsp: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if bpsp is not None:
                self.bar.set_postfix(bpsp=f"{bpsp:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


# --- the run -------------------------------------------------------------------------

class Trainer:
    """One process's share of a training run. Use :func:`train`."""

    def __init__(self, opts: TrainOptions, info: DistInfo) -> None:
        check_options(opts)
        self.opts = opts
        self.info = info
        kind = resolve_device_kind(opts.device)
        self.device = torch.device(kind, info.local_rank) if kind == "cuda" else torch.device("cpu")
        ckpt = load_checkpoint(opts.resume) if opts.resume is not None else None
        if ckpt is not None and ckpt["mode"] != opts.mode:
            raise ValueError(f"the checkpoint was trained with --mode {ckpt['mode']}, not {opts.mode}")
        self.cfg, init = _resolve_model(opts, ckpt)
        check_mode_available(opts.mode, self.cfg)
        qp = _qp_list(opts) if opts.mode == "finetune" else None
        self.save_dir = Path(opts.save_dir)
        self.written: list[str] = []

        sig, ins = _build_nets(opts, self.cfg, self.device, init)
        self.objective = build_objective(opts.mode, self.cfg, sig, ins, qp=qp)
        if qp is not None and init is not None:
            self._check_qp_list_model(qp, init)
        if opts.amp:
            for net in self.objective.modules().values():
                keep_logits_float32(net)
        # Model init is identical everywhere; dropout and the like differ per rank.
        random.seed(opts.seed + info.rank)
        np.random.seed(opts.seed + info.rank)
        torch.manual_seed(opts.seed + info.rank)

        self.data = _Data(opts, self.cfg, info)
        self.objective.check_names(self.data.names)  # finetune: every image needs its qp
        self.module = _LossModule(self.objective)
        if opts.train_only is not None:
            freeze_all_but(self.module, opts.train_only)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=opts.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=opts.decay_interval, gamma=opts.decay_rate
        )
        self.iteration = 0
        self.best: float | None = None
        self.wall_before = 0.0  # wall time of the runs this one resumes
        if ckpt is not None:
            self._restore(ckpt)
        # After the restore: an average started here starts from the checkpoint's weights.
        self.ema = self._weight_average(params, ckpt)
        self.model: nn.Module = self.module
        if info.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)

    # -- state --
    def _restore(self, ckpt: Mapping[str, Any]) -> None:
        modules = self.objective.modules()
        missing = sorted(set(modules) - set(ckpt["modules"]))
        if missing:
            raise ValueError(f"the checkpoint lacks the modules {missing}")
        for name, module in modules.items():
            module.load_state_dict(ckpt["modules"][name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.opts.resume_lr is not None:
            self._set_base_lr(self.opts.resume_lr)
        self.iteration = int(ckpt["iteration"])
        self.best = ckpt["best_valid_bpsp"]
        self.wall_before = float(ckpt["wall_time"])
        layout = (ckpt["world_size"], ckpt["batch_size"], ckpt.get("batch_pixels", 0))
        same_layout = layout == (self.info.world_size, self.opts.batch_size, self.opts.batch_pixels)
        if same_layout and ckpt["seed"] == self.opts.seed:
            self.data.epoch = int(ckpt["epoch"])
            self.data.batch_in_epoch = int(ckpt["batch_in_epoch"])
            _set_rng_state(ckpt["rng"][self.info.rank], self.device)
        else:
            # Another layout: the epoch position means nothing here; start the next epoch.
            self.data.epoch = int(ckpt["epoch"]) + 1
            self._warn(
                "resuming with another world size, batch size or seed than the checkpoint's: "
                "the data order restarts at the next epoch, so the run is not bit-exact"
            )
            torch.manual_seed(self.opts.seed + self.info.rank + self.iteration)

    def _set_base_lr(self, lr: float) -> None:
        """Restart the restored schedule from ``lr``, keeping the decay it has reached."""
        if lr == self.scheduler.base_lrs[0]:
            return  # the same schedule: leave its lr bit for bit
        decayed = self.optimizer.param_groups[0]["lr"] / self.scheduler.base_lrs[0]
        self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * decayed

    def _weight_average(self, params: Sequence[Tensor], ckpt: Mapping[str, Any] | None) -> WeightAverage | None:
        """The --ema average: the checkpoint's when it has one, else started from the current weights."""
        saved = ckpt.get("ema") if ckpt is not None else None
        if not self.opts.ema:
            if saved is not None:
                self._warn("--ema is off: the checkpoint's weight average is dropped and the exports hold the "
                           "raw weights")
            return None
        average = WeightAverage(params, self.opts.ema)
        if saved is not None:
            average.load_state_dict(saved)
            if saved["decay"] != self.opts.ema:
                self._warn(f"the checkpoint's weight average used --ema {saved['decay']}, this run "
                           f"{self.opts.ema}: the run is not bit-exact")
        elif ckpt is not None:
            self._warn("the checkpoint has no weight average: --ema starts one from its weights")
        return average

    def _warn(self, text: str) -> None:
        if self.info.master:
            print(f"warning: {text}", file=sys.stderr)

    def _checkpoint(self, wall: float) -> None:
        rng = _rng_state(self.device)
        states = [rng] * self.info.world_size
        if self.info.world_size > 1:
            states = [None] * self.info.world_size  # type: ignore[list-item]
            dist.all_gather_object(states, rng)
        if not self.info.master:
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "mode": self.opts.mode,
            "config": self.cfg.to_dict(),
            "args": dataclasses.asdict(self.opts),
            "modules": {n: m.state_dict() for n, m in self.objective.modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "epoch": self.data.epoch,
            "batch_in_epoch": self.data.batch_in_epoch,
            "world_size": self.info.world_size,
            "batch_size": self.opts.batch_size,
            "batch_pixels": self.opts.batch_pixels,
            "seed": self.opts.seed,
            "best_valid_bpsp": self.best,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "wall_time": wall,
            "rng": states,
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        self._write(self.save_dir / CHECKPOINT_FILE, buf.getvalue())

    def _write(self, path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)
        self.written.append(path.name)

    def _export(self, name: str) -> Path:
        """Saves the model (the weight average, with --ema)."""
        path = self.save_dir / name
        sig, ins = self.objective.nets()
        with self._averaged():
            save_model(path, self.cfg, sig, ins)
        self.written.append(name)
        return path

    def _averaged(self) -> contextlib.AbstractContextManager[None]:
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    # -- validation --
    @torch.no_grad()
    def validate(self) -> float:
        """Bits per sub-pixel of the validation set (all ranks; eval mode; the
        weight average with --ema).

        Runs on a forked RNG seeded the same way every time: a latent model
        samples its latents even in eval mode, so validation neither
        disturbs the training's random stream (exact resume) nor varies
        from one validation to the next for the same weights.
        """
        self.module.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # bits, sub-pixels
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), self._averaged():
            torch.manual_seed(self.opts.seed + self.info.rank)
            for images, names in self.data.valid_loader:
                for x, group_names in _same_shape_groups(images, names, self.opts.batch_size):
                    x = x.to(self.device)
                    with self._autocast():
                        _, metrics = self.objective.loss(x, group_names)
                    totals[0] += metrics["bpsp"].double() * x.numel()
                    totals[1] += x.numel()
        self.module.train()
        bits, subpixels = _all_reduce_sum(totals, self.info).tolist()
        return bits / subpixels

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.opts.amp)

    # -- the loop --
    def run(self) -> TrainResult:
        opts, info = self.opts, self.info
        if info.master:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        log = _Log(self.save_dir, self.iteration, opts.num_iters, info.master)
        start_wall = time.perf_counter()

        def wall() -> float:
            return self.wall_before + time.perf_counter() - start_wall

        batch = f"{opts.batch_pixels}px" if opts.batch_pixels else str(opts.batch_size)
        log.line(
            f"# aribbps.train mode={opts.mode} config={self.cfg.name} processes={info.world_size} "
            f"batch={batch}x{info.world_size} device={self.device.type} "
            f"start_iter={self.iteration} num_iters={opts.num_iters} valid_num={self.data.valid_num} "
            f"lr={self.optimizer.param_groups[0]['lr']:.3e}"
        )
        best_path = self.save_dir / f"best_{opts.mode}.safetensors"
        sums: dict[str, Tensor] = {}
        steps = 0
        self.module.train()
        batches = self.data.batches()
        try:
            while self.iteration < opts.num_iters:
                x, names = next(batches)
                x = x.to(self.device, non_blocking=True)
                self._set_latent_weight()
                with self._autocast():
                    loss, metrics = self.model(x, names)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.iteration)
                self.iteration += 1
                steps += 1
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
                last = self.iteration == opts.num_iters
                train_bpsp = None
                if self.iteration % opts.log_interval == 0 or last:
                    train_metrics = self._mean_metrics(sums, steps)  # CPU-GPU sync point
                    sums, steps = {}, 0
                    train_bpsp = train_metrics["bpsp"]
                    if not np.isfinite(train_bpsp):
                        raise TrainingError(
                            f"training diverged: loss is {train_bpsp} at iteration {self.iteration}; "
                            "lower --lr or resume from an earlier checkpoint"
                        )
                    log.scalars("train", train_metrics, self.iteration)
                log.step(train_bpsp)
                valid = None
                if self.iteration % opts.valid_interval == 0 or last:
                    if self.data.valid_num:
                        valid = self.validate()
                        log.scalars("valid", {"bpsp": valid}, self.iteration)
                        if info.master and (self.best is None or valid < self.best):
                            self.best = valid
                            self._export(best_path.name)
                if train_bpsp is not None or valid is not None:
                    log.line(_log_line(self.iteration, opts.num_iters, train_bpsp,
                                       float(self.scheduler.get_last_lr()[0]), valid, wall()))
                if self.iteration % opts.valid_interval == 0 or last:
                    self._checkpoint(wall())
            final_path = self.save_dir / f"final_{opts.mode}.safetensors"
            if info.master:
                self._export(final_path.name)
            self._write_debug()
        finally:
            log.close()
        return TrainResult(
            iterations=self.iteration,
            best_valid_bpsp=self.best,
            best_path=best_path if self.best is not None else None,
            final_path=final_path,
            checkpoint_path=self.save_dir / CHECKPOINT_FILE,
        )

    def _check_qp_list_model(self, qp: QpList, init: tuple[BitPlaneNet, BitPlaneNet]) -> None:
        """Warn when the qp list was made with another config or INS net than --init's (its qp then may be off)."""
        if qp.model is not None and qp.model != self.cfg.name:
            self._warn(f"the qp list was made with model {qp.model!r}, not with --init's {self.cfg.name!r}: "
                       "its qp may not be what the codec will choose with this model")
            return
        if qp.ins_sha256 is not None:
            made_with, start, what = qp.ins_sha256, net_hash(init[1]), "INS net"
        elif qp.weights_sha256 is not None:  # a list without the INS hash: compare whole models
            made_with, start, what = qp.weights_sha256, model_hash(*init), "weights"
        else:
            return
        if made_with != start:
            self._warn(
                f"the qp list was made with model {qp.model!r} ({what} {made_with[:12]}...), "
                f"not with --init's ({what} {start[:12]}...): its qp may not be what the codec "
                "will choose with this model's INS net"
            )

    def _set_latent_weight(self) -> None:
        """KL warm-up: weight (iteration + 1) / kl_warmup, capped at 1 (a function of the iteration: exact on resume)."""
        if self.opts.kl_warmup and hasattr(self.objective, "latent_weight"):
            self.objective.latent_weight = min(1.0, (self.iteration + 1) / self.opts.kl_warmup)

    def _mean_metrics(self, sums: Mapping[str, Tensor], steps: int) -> dict[str, float]:
        names = sorted(sums)
        stacked = torch.stack([sums[n] for n in names]).double()
        stacked = _all_reduce_sum(stacked, self.info) / (steps * self.info.world_size)
        return dict(zip(names, stacked.tolist()))

    def _write_debug(self) -> None:
        if self.opts.debug_dir is None:
            return
        sig, ins = self.objective.nets()
        record = {"rank": self.info.rank, "hash": model_hash(sig, ins), "written": self.written}
        Path(self.opts.debug_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.opts.debug_dir) / f"rank{self.info.rank}.json").write_text(json.dumps(record))


def _log_line(it: int, total: int, train: float | None, lr: float, valid: float | None, wall: float) -> str:
    t = f"{train:.4f}" if train is not None else "-"
    v = f"{valid:.4f}" if valid is not None else "-"
    return f"iter {it}/{total} | train {t} bpsp | lr {lr:.3e} | valid {v} bpsp | {wall:.1f} s"


def train(opts: TrainOptions) -> TrainResult:
    """Train in this process (one of a torchrun group, or alone).

    Raises:
        ValueError, AribError: bad options, data or checkpoint (before any
            step is taken).
        TrainingError: the loss diverged.
    """
    info = init_distributed(resolve_device_kind(opts.device))
    result = Trainer(opts, info).run()
    if info.world_size > 1 and dist.is_initialized():
        # Every rank reaches the barrier before any tears its connections
        # down: a rank that left first could abort its peer's gloo threads
        # ("terminate called without an active exception"). After an error
        # there is no teardown: a collective there could hang on a peer
        # still inside a step, and torchrun stops the group anyway.
        dist.barrier()
        dist.destroy_process_group()
    return result


def combine_models(sig_path: str | os.PathLike[str], ins_path: str | os.PathLike[str],
                   out_path: str | os.PathLike[str]) -> str:
    """A model file with the SIG net of ``sig_path`` and the INS net of ``ins_path``.

    Both files must hold the same config. Returns the new weights hash.
    """
    cfg_a, sig, _, _ = load_model(sig_path)
    cfg_b, _, ins, _ = load_model(ins_path)
    if cfg_a != cfg_b:
        a, b = cfg_a.to_dict(), cfg_b.to_dict()
        diff = ", ".join(f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k])
        raise ModelLoadError(f"the configs of {str(sig_path)!r} and {str(ins_path)!r} differ: {diff}")
    return save_model(out_path, cfg_a, sig, ins)
