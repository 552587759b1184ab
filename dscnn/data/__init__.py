"""The toolkit's data layer: image data sets held in memory as uint8 tensors, shared by search,
pruning, export and studies.

Public API: `load_dataset` (`DataConfig` -> `ImageDataset`), `DATASETS`, `DataError`, and the
batch helpers `prepare_batch` / `random_crop_flip` (`dscnn.data.augment`) and `decode_all`
(`dscnn.data.decode`). One reader per on-disk format lives in its own module.
"""

from dscnn.data._common import IMAGE_SUFFIXES, DataError, RawDataset, RawSplit
from dscnn.data.augment import prepare_batch, random_crop_flip
from dscnn.data.decode import decode_all, fit_square
from dscnn.data.load import DATA_ENV, DATASETS, DataConfig, ImageDataset, load_dataset

__all__ = [
    "DATASETS", "DATA_ENV", "IMAGE_SUFFIXES", "DataConfig", "DataError", "ImageDataset", "RawDataset", "RawSplit",
    "decode_all", "fit_square", "load_dataset", "prepare_batch", "random_crop_flip",
]
