"""Exception types that aribbps raises for bad input.

Every error a user can cause (a bad image, a damaged ``.arib`` file, the wrong
model) is an :class:`AribError`, so a script can catch one type and the CLI can
turn it into a one-line message and a non-zero exit code.
"""
from __future__ import annotations


class AribError(Exception):
    """Base class of all errors caused by input rather than by a bug."""


class ImageFormatError(AribError, ValueError):
    """An input image cannot be coded (unreadable, 16-bit, unsupported mode)."""


class ArchiveError(AribError, ValueError):
    """An ``.arib`` file is truncated, corrupted or of an unknown version."""


class ModelMismatchError(AribError, ValueError):
    """An ``.arib`` file was written with a model other than the one loaded."""


class ModelLoadError(AribError, ValueError):
    """Weights or a config cannot be loaded (missing file, wrong layout)."""


class ChecksumError(AribError):
    """A decoded image does not match the checksum the encoder stored."""


class NumericsMismatchError(ArchiveError, ChecksumError):
    """Decoding failed and this machine computes the networks differently from the encoder's
    (:mod:`aribbps.numerics_probe`): the likely cause, rather than damage to the file. Both an
    ArchiveError and a ChecksumError, as the failure it explains was one or the other."""
