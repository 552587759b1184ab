"""The registry contract, run on every model (docs/design.md sections 0 and 3)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import dscnn
from tests.contracts import assert_deploy_equivalent, assert_trains

ALL_MODELS = dscnn.list_models()
#: Registry models with non-default overrides that change the graph, run through the same contract:
#: every RepMiX reading (placement x layout), DSCNN's Table-1 stem at strides 4 and 2 and the old
#: patch stem (a 32x32 input otherwise gets the stride-1 stem), RefCO with R=4 and an explicit K.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    *(("dscnn_t0", {"repmix_placement": p, "repmix_layout": lay})
      for p in ("stem", "blocks", "hidden") for lay in ("split", "parallel") if (p, lay) != ("stem", "split")),
    ("dscnn_t0", {"stem_stride": 4}), ("dscnn_t0", {"stem_stride": 2}), ("dscnn_t0", {"stem_stride": 4, "stem_kernel": 0}),
    ("falconnet", {"refco_reduction": 4, "refco_kernel": 8}), ("falconnet", {"channel_op": "dense"}),
]
CASES = [pytest.param(name, {}, id=name) for name in ALL_MODELS] + [
    pytest.param(name, overrides, id=f"{name}[{','.join(f'{k}={v}' for k, v in overrides.items())}]")
    for name, overrides in VARIANTS
]


def _small(name: str, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return dscnn.create_model(name, num_classes=10, resolution=32, **(overrides or {}))


@pytest.mark.parametrize("name,overrides", CASES)
def test_forward_backward(name: str, overrides: dict[str, Any]) -> None:
    assert_trains(_small(name, overrides), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,overrides", CASES)
def test_deploy_equivalence(name: str, overrides: dict[str, Any], dtype: torch.dtype) -> None:
    assert_deploy_equivalent(_small(name, overrides), torch.randn(2, 3, 32, 32), dtype)


@pytest.mark.parametrize("name,overrides", CASES)
def test_interface(name: str, overrides: dict[str, Any]) -> None:
    model = _small(name, overrides).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = model.forward_head(model.forward_features(x))
        assert torch.allclose(logits, model(x))
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.config.num_classes == 7
    assert model(x).shape == (1, 7)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*repvgg_a0"):
        dscnn.create_model("nope")


def test_unknown_override_is_named() -> None:
    with pytest.raises(ValueError, match="no field.*widthz"):
        dscnn.create_model("repvgg_a0", widthz=3)


def test_duplicate_registration_refused() -> None:
    def repvgg_a0() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        dscnn.register_model(repvgg_a0)  # type: ignore[arg-type]


# Official deploy params and fvcore MACs at 224 with 1000 classes (docs/design.md section 3).
REFERENCE_COUNTS = {
    "repvgg_a0": (8_309_384, 1_361_513_728),
    "repvgg_a1": (12_789_864, 2_364_030_208),
    "repvgg_b0": (14_339_048, 3_057_663_232),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_counts(name: str) -> None:
    params, macs = REFERENCE_COUNTS[name]
    deployed = dscnn.reparameterize_model(dscnn.create_model(name))
    assert dscnn.count_params(deployed) == params
    if macs is not None:
        assert dscnn.count_macs(deployed, 224) == macs
