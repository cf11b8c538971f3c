"""Corpus building: training and evaluation patches cut from photos.

See :mod:`aribbps.data.corpus` and ``docs/corpus.md``; the command line is
``python -m aribbps.data build-corpus``.
"""
from aribbps.data.corpus import (
    CorpusConfig,
    CorpusError,
    CorpusWarning,
    PhotoError,
    box_downsample,
    build_corpus,
    choose_holdout,
    find_photos,
    load_photo,
    plan_photos,
    planned_crops,
)

__all__ = [
    "CorpusConfig",
    "CorpusError",
    "CorpusWarning",
    "PhotoError",
    "box_downsample",
    "build_corpus",
    "choose_holdout",
    "find_photos",
    "load_photo",
    "plan_photos",
    "planned_crops",
]
