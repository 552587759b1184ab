"""FasterNet baseline: PConv semantics and the published counts (docs/design.md section 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dscnn
from dscnn.blocks.pconv import PConv

# (train-form params, fvcore deploy MACs) at 224 / 1000 classes. fvcore = the papers' conv+FC MACs
# (T0 335,422,720; T1 850.5M; T2 1,904.3M) + one op per element entering the global average pool.
COUNTS = {
    "fasternet_t0": (3_905_500, 335_422_720 + 320 * 7 * 7),
    "fasternet_t1": (7_595_368, 850_511_872 + 512 * 7 * 7),
    "fasternet_t2": (14_982_888, 1_904_334_848 + 768 * 7 * 7),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_published_counts(name: str) -> None:
    params, macs = COUNTS[name]
    model = dscnn.create_model(name)
    assert dscnn.count_params(model) == params
    assert dscnn.count_macs(dscnn.deploy_copy(model), 224) == macs


def test_pconv_touches_only_the_first_quarter() -> None:
    torch.manual_seed(0)
    pconv, x = PConv(12), torch.randn(2, 12, 8, 8)
    with torch.no_grad():
        y = pconv(x)
        assert torch.equal(y[:, 3:], x[:, 3:])
        assert torch.allclose(y[:, :3], nn.functional.conv2d(x[:, :3], pconv.conv.weight, padding=1))
    with pytest.raises(ValueError, match="n_div=8 leaves no channels"):
        PConv(7, n_div=8)


@pytest.mark.parametrize(("resolution", "stem", "final"), [(32, (3, 1), 4), (64, (2, 2), 4), (224, (4, 4), 7)])
def test_stem_follows_resolution(resolution: int, stem: tuple[int, int], final: int) -> None:
    model = dscnn.create_model("fasternet_t0", resolution=resolution, embed_dim=8, num_classes=10)
    conv = model.stem.conv  # type: ignore[union-attr]
    assert (conv.kernel_size[0], conv.stride[0]) == stem
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, resolution, resolution))  # type: ignore[operator]
    assert features.shape == (1, 64, final, final)


def test_bad_depths() -> None:
    with pytest.raises(ValueError, match="4 stage depths"):
        dscnn.create_model("fasternet_t0", depths=(1, 2, 8))
