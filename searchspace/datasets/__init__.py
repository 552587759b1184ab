"""Readers of the on-disk data set formats, one per file; `searchspace.data` is the entry point."""

from searchspace.datasets._common import DataError, RawDataset, RawSplit

__all__ = ["DataError", "RawDataset", "RawSplit"]
