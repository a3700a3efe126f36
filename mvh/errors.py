"""Narrow exception types. The CLI turns each into a one-line message and the exit code it carries.

Messages name the file (or object) at fault and the fix, on one line.
"""

from __future__ import annotations


class MvhError(Exception):
    """Base class: an expected failure the CLI reports as one line."""

    exit_code: int = 1


class UsageError(MvhError):
    """Bad input the user can fix (a wrong path, a missing option): exit code 2."""

    exit_code = 2


class SlideError(UsageError):
    """A slide cannot be opened or read."""


class MissingMppError(SlideError):
    """A slide carries no um/px in its metadata and none was given with --mpp."""


class NoTissueError(SlideError):
    """No tile of a slide reaches the minimum tissue fraction."""


class CheckpointError(UsageError):
    """A checkpoint cannot be read, or does not match the model exactly."""


class WeightsRequiredError(CheckpointError):
    """No weights were given and random initialisation was not asked for."""


class ModelNotFoundError(UsageError):
    """A backbone name is not in the registry."""


class StoreError(MvhError):
    """The embedding store is missing, unreadable or inconsistent."""


class StoreNotFoundError(StoreError, UsageError):
    """No store at the given path/URI."""


class FingerprintMismatchError(StoreError, UsageError):
    """Embeddings of another model, weights or tile geometry would be mixed into a store."""


class StoreDamagedError(StoreError):
    """A store's files are unreadable or its data fails an integrity check (exit 1)."""


class StoreUnusableError(StoreError, UsageError):
    """A store location cannot be used as given (a file, read-only, no meta table, an older layout)."""


class StoreWriteError(StoreError):
    """Writing to a store failed (disk full, I/O error); committed slides are kept."""


class StoreUnreachableError(StoreWriteError):
    """An object store that does not answer (a dead or stopped endpoint): exit 1; a rerun resumes."""


class StaleIndexError(StoreError, UsageError):
    """The vector index was built from an older version of the store."""


class IndexNotFoundError(StoreError, UsageError):
    """No vector index has been built for the store."""


class DataError(UsageError):
    """An input table or dataset (labels, cohort, ST samples) is malformed."""


class CohortError(DataError):
    """A survival cohort table fails validation."""


class FigureError(MvhError):
    """A figure could not be drawn; the numbers it would show were already written (exit 1)."""


class DependencyError(MvhError):
    """An optional dependency needed for the requested path is not installed."""


class WorkerStartError(MvhError):
    """An embedding worker of a Ray cluster cannot start: its node lacks the model, packages or device."""


class OutputWriteError(MvhError):
    """An output file could not be written (disk full, I/O error); no partial file is left (exit 1)."""
