"""Training ArIB-BPS networks: ``python -m aribbps.train`` (see docs/training.md).

Python API (everything the CLI does)::

    from aribbps.train import TrainOptions, train, combine_models
    train(TrainOptions(mode="ins", config="tiny-context", dataset_type="filedataset",
                       data_dir="patches", save_dir="runs/ins", num_iters=1000))

Modules: :mod:`~aribbps.train.trainer` (loop, checkpoints, resume, DDP),
:mod:`~aribbps.train.objectives` (what each ``--mode`` minimises),
:mod:`~aribbps.train.finetune` (the qp lists of ``--mode finetune``:
``generate-finetune``), :mod:`~aribbps.train.presets` (the paper's
settings table).
"""
from aribbps.train.finetune import QpList, QpListError, generate_finetune, read_qp_list
from aribbps.train.objectives import (
    FinetuneObjective,
    InsObjective,
    ModeUnavailable,
    Objective,
    SigObjective,
    build_objective,
)
from aribbps.train.presets import PRESETS, Preset, get_preset
from aribbps.train.trainer import (
    TrainingError,
    TrainOptions,
    TrainResult,
    combine_models,
    launch,
    load_checkpoint,
    train,
)

__all__ = [
    "FinetuneObjective",
    "InsObjective",
    "ModeUnavailable",
    "Objective",
    "PRESETS",
    "Preset",
    "QpList",
    "QpListError",
    "SigObjective",
    "TrainOptions",
    "TrainResult",
    "TrainingError",
    "build_objective",
    "combine_models",
    "generate_finetune",
    "get_preset",
    "launch",
    "load_checkpoint",
    "read_qp_list",
    "train",
]
