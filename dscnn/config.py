"""Architecture configs: small frozen dataclasses that serialize to JSON and rebuild a model.

Each model family defines one subclass of `ArchConfig` with a ``family`` name. The same config
comes out of the search sampler, is stored as a trial attribute, is written beside every
checkpoint, and rebuilds the model through `dscnn.build_model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="ArchConfig")
#: (module name, output channels, input channels) of a Conv2d / Linear resized by channel pruning
PrunedLayer = tuple[str, int, int]


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Base of every model config; subclasses add their fields (str/int/float/bool/tuple only)."""

    family: ClassVar[str] = ""

    num_classes: int = 1000  # classifier outputs
    resolution: int = 224  # input height = width the model is built and counted at
    # channel-pruned deploy model: the layers whose widths differ from the fields' (dscnn.pruned);
    # () = not pruned. Kept out of `to_dict` when empty, so unpruned configs hash as they always did.
    pruned_layers: tuple[PrunedLayer, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not self.pruned_layers:
            del data["pruned_layers"]
        return data

    def to_json(self) -> str:
        return json.dumps({"family": self.family, **self.to_dict()}, sort_keys=True)

    def arch_hash(self) -> str:
        """Stable short hash of the architecture (family + every field)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied; unknown field names are a clear error."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no field(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Inverse of `to_dict`; JSON lists become the tuples the field types declare."""
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"family"})
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: _as_declared(v, hints[k]) for k, v in data.items() if k in fields})


def _as_declared(value: Any, hint: Any) -> Any:
    if isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_as_declared(v, inner) for v in value)
    return value


def default_stem_stride(resolution: int) -> int:
    """Stem downsampling for an input size: 4 at ImageNet scale, 2 at 64x64, 1 at 32x32.

    Small inputs (CIFAR, Tiny-ImageNet) would otherwise be reduced to a 1x1 map in the last stage.
    """
    if resolution >= 128:
        return 4
    return 2 if resolution >= 64 else 1
