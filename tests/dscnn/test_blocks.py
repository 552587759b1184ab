"""Seeded random configurations of every branch block: train and deploy forms agree (docs/design.md sections 0, 2)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from dscnn.blocks import ACBlock, BranchConv, RepASO, RepLKConv, RepSO, RepVGGBlock, parse_branch_set
from dscnn.reparam import reparameterize_model
from tests.contracts import assert_deploy_equivalent

_rng = random.Random(20240607)
#: (test id, in_channels, factory, kernel size of the one fused conv)
Case = tuple[str, int, Callable[[], nn.Module], tuple[int, int]]


def _repvgg_cases(n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        groups, stride = _rng.choice([1, 2, 4]), _rng.choice([1, 2])
        cin, cout = 4 * _rng.randint(1, 3), 4 * _rng.randint(1, 3)
        if _rng.random() < 0.5:
            cout = cin  # exercise the BN identity branch
        cases.append((f"repvgg-{cin}-{cout}-g{groups}-s{stride}", cin,
                      lambda a=cin, b=cout, g=groups, s=stride: RepVGGBlock(a, b, stride=s, groups=g), (3, 3)))
    return cases


def _acb_cases(n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        k, stride, groups, dil = _rng.choice([3, 5]), _rng.choice([1, 2]), _rng.choice([1, 2]), _rng.choice([1, 2])
        cin, cout = 2 * _rng.randint(1, 4), 2 * _rng.randint(1, 4)
        cases.append((f"acb-{cin}-{cout}-k{k}-s{stride}-g{groups}-d{dil}", cin,
                      lambda a=cin, b=cout, k=k, s=stride, g=groups, d=dil:
                      ACBlock(a, b, k, stride=s, groups=g, dilation=d), (k, k)))
    return cases


def _replk_cases() -> list[Case]:
    specs = [(5, 3, 1), (7, 3, 2), (9, 5, 1), (13, 5, 2)]
    return [(f"replk-K{big}-k{small}-s{s}", 6, lambda a=big, b=small, s=s: RepLKConv(6, a, b, stride=s),
             (big, big)) for big, small, s in specs]


_TOKENS = ["3x3", "5x5", "7x7", "1x5", "5x1", "1x3", "3x1", "1x1"]


def _random_branch_set() -> str:
    tokens = _rng.sample(_TOKENS, _rng.randint(1, 4))
    tokens = [t + f"*{_rng.randint(2, 3)}" if _rng.random() < 0.3 else t for t in tokens]
    return ",".join(tokens + (["id"] if _rng.random() < 0.5 else []))


def _repaso_cases(n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        text, stride = _random_branch_set(), _rng.choice([1, 2])
        shapes = parse_branch_set(text).kernels
        size = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        cases.append((f"repaso-{text}-s{stride}", 5, lambda t=text, s=stride: RepASO(5, t, stride=s), size))
    for row in ("A", "J"):
        size = (7, 7) if row == "A" else (3, 3)
        cases.append((f"repaso-row{row}", 5, lambda r=row: RepASO(5, r), size))
    return cases


def _reps_cases() -> list[Case]:
    return [(f"repso-n{n}-s{s}", 4, lambda n=n, s=s: RepSO(4, n, stride=s), (3, 3)) for n, s in ((1, 1), (3, 1), (2, 2))]


def _branch_conv_cases(n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        shapes = _rng.sample([(1, 1), (3, 3), (1, 3), (3, 1), (5, 5), (5, 3)], _rng.randint(1, 3))
        groups, identity = _rng.choice([1, 3]), _rng.random() < 0.6
        size = (max(s[0] for s in shapes), max(s[1] for s in shapes))
        name = ",".join(f"{h}x{w}" for h, w in shapes)
        cases.append((f"branchconv-{name}-g{groups}-id{int(identity)}", 6,
                      lambda sh=shapes, g=groups, i=identity: BranchConv(6, 6, sh, groups=g, identity=i), size))
    return cases


CASES = (_repvgg_cases(7) + _acb_cases(7) + _replk_cases() + _repaso_cases(8) + _reps_cases()
         + _branch_conv_cases(4))


@pytest.mark.parametrize(("cin", "factory", "size"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_deploy_equivalent(cin: int, factory: Callable[[], nn.Module], size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = factory()
    x = torch.randn(2, cin, 32, 32)
    for dtype in (torch.float32, torch.float64):
        assert_deploy_equivalent(block, x, dtype)
    fused = reparameterize_model(block)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and tuple(convs[0].kernel_size) == size and convs[0].bias is not None


@pytest.mark.parametrize(("text", "token"), [("3x3,4x4", "4x4"), ("3x3,foo", "foo"), ("3x3*0", "3x3*0"), ("", "")])
def test_malformed_branch_set_names_token(text: str, token: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad token {token!r}")):
        parse_branch_set(text)


def test_branch_set_needs_a_kernel_and_one_id() -> None:
    with pytest.raises(ValueError, match="at least one kernel"):
        parse_branch_set("id")
    with pytest.raises(ValueError, match="'id' given twice"):
        parse_branch_set("3x3,id,id")
    assert str(parse_branch_set("J")) == "3x3*3,3x1,1x3,1x1,id"


@pytest.mark.parametrize(
    "build",
    [
        lambda: RepVGGBlock(6, 8, groups=4),
        lambda: ACBlock(6, 6, groups=4),
        lambda: BranchConv(5, 10, [(3, 3)], groups=2),
    ],
    ids=["repvgg", "acb", "branchconv"],
)
def test_widths_not_divisible_by_groups(build: Callable[[], nn.Module]) -> None:
    with pytest.raises(ValueError, match="divisible by groups"):
        build()


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="odd"):
        ACBlock(4, 4, 4)
    with pytest.raises(ValueError, match="small_kernel < kernel_size"):
        RepLKConv(4, 5, 5)
    with pytest.raises(ValueError, match="identity branch needs"):
        BranchConv(4, 4, [(3, 3)], stride=2, identity=True)
    with pytest.raises(ValueError, match="must be odd"):
        BranchConv(4, 4, [(2, 2)])
    with pytest.raises(ValueError, match="n_3x3 >= 1"):
        RepSO(4, 0)
