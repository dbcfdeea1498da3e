"""Typed errors in one place: the CLI maps them to exit codes, the API to 4xx responses."""

from __future__ import annotations


class TerrastillError(Exception):
    """Base class for every error terrastill raises on purpose."""

    exit_code = 1
    http_status = 500


class BadInputError(TerrastillError):
    """The user's input (file, row, option) is not what was expected: exit 2, HTTP 400/422."""

    exit_code = 2
    http_status = 422


class NotFoundError(BadInputError):
    """Something the user named (file, model, job, collection) does not exist."""

    http_status = 404


class SpecMismatchError(BadInputError):
    """A model's input spec does not match the data it is given."""


class NoImageryError(BadInputError):
    """No acquisition satisfies the request (date, tolerance, cloud limit)."""


class CatalogError(TerrastillError):
    """A catalogue (STAC API or file) failed after retries."""

    http_status = 502


class AssetReadError(TerrastillError):
    """An image asset could not be read (missing, corrupt, unreachable).

    ``transient`` is true when the asset was unreachable after retries (worth resuming later),
    false when it is missing or corrupt (the observation group is rejected).
    """

    http_status = 502

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class OutputError(BadInputError):
    """The output location cannot be written (unwritable, disk full)."""
