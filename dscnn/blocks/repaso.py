"""RepASO / RepSO: depthwise spatial operators built from a set of parallel branches.

RepASO is DSCNN's re-parameterizable spatial operator: on C channels, parallel depthwise branches
from a *branch set*, each with its own BN, summed; deploy form is one depthwise conv of the largest
kernel. RepSO is FalconNet's fixed set (N copies of 3x3, 1x3, 3x1, 1x1, identity) = DSCNN Table 5
row J when N = 3.

Branch-set notation: a comma list of ``KxK[*n]`` items plus ``id``, e.g. ``3x3*3,1x3,3x1,1x1,id``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dscnn.blocks.branch_conv import BranchConv

_KERNEL_TOKEN = re.compile(r"^(\d+)x(\d+)(?:\*(\d+))?$")

#: DSCNN ablation rows (Table 5), the search space's branch-set menu.
ABLATION_BRANCH_SETS: dict[str, str] = {
    "A": "7x7",
    "B": "5x5",
    "C": "3x3",
    "D": "3x3*3",
    "E": "3x3*3,1x1",
    "F": "3x3*3,id",
    "G": "3x3*3,3x1,1x3",
    "H": "3x3*3,3x1,1x3,1x1",
    "I": "3x3*3,3x1,1x3,id",
    "J": "3x3*3,3x1,1x3,1x1,id",
}


@dataclass(frozen=True)
class BranchSet:
    """Parsed branch set: kernel shapes (repeats expanded) and whether a BN identity branch exists."""

    kernels: tuple[tuple[int, int], ...]
    identity: bool

    def __str__(self) -> str:
        items: list[str] = []
        for shape in dict.fromkeys(self.kernels):
            n = self.kernels.count(shape)
            items.append(f"{shape[0]}x{shape[1]}" + (f"*{n}" if n > 1 else ""))
        return ",".join(items + (["id"] if self.identity else []))


def parse_branch_set(text: str) -> BranchSet:
    """Parse ``3x3*3,1x3,3x1,1x1,id`` (or an ablation row letter ``A``..``J``) into a `BranchSet`."""
    text = ABLATION_BRANCH_SETS.get(text.strip(), text)
    kernels: list[tuple[int, int]] = []
    identity = False
    for raw in text.split(","):
        token = raw.strip()
        if token == "id":
            if identity:
                raise ValueError(f"branch set {text!r}: 'id' given twice")
            identity = True
            continue
        match = _KERNEL_TOKEN.match(token)
        if not match:
            raise ValueError(f"branch set {text!r}: bad token {token!r} (expected KxK, KxK*n or id)")
        kh, kw, n = int(match[1]), int(match[2]), int(match[3] or 1)
        if kh % 2 == 0 or kw % 2 == 0 or n < 1:
            raise ValueError(f"branch set {text!r}: bad token {token!r} (kernel sizes must be odd, n >= 1)")
        kernels.extend([(kh, kw)] * n)
    if not kernels:
        raise ValueError(f"branch set {text!r}: needs at least one kernel branch")
    return BranchSet(tuple(kernels), identity)


class RepASO(BranchConv):
    """Depthwise spatial operator on ``channels`` with the given branch set (string or `BranchSet`)."""

    def __init__(self, channels: int, branch_set: str | BranchSet = "J", *, stride: int = 1) -> None:
        parsed = parse_branch_set(branch_set) if isinstance(branch_set, str) else branch_set
        super().__init__(
            channels, channels, parsed.kernels, stride=stride, groups=channels,
            identity=parsed.identity and stride == 1,
        )
        self.branch_set = parsed


class RepSO(RepASO):
    """FalconNet's RepSO: ``n_3x3`` copies of 3x3, then 1x3, 3x1, 1x1 and identity, depthwise."""

    def __init__(self, channels: int, n_3x3: int = 3, *, stride: int = 1) -> None:
        if n_3x3 < 1:
            raise ValueError(f"RepSO needs n_3x3 >= 1, got {n_3x3}")
        super().__init__(channels, f"3x3*{n_3x3},1x3,3x1,1x1,id", stride=stride)
