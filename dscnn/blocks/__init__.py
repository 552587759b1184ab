"""Re-parameterizable building blocks, one concept per file."""

from dscnn.blocks.acb import ACBlock
from dscnn.blocks.branch_conv import BranchConv
from dscnn.blocks.repaso import ABLATION_BRANCH_SETS, BranchSet, RepASO, RepSO, parse_branch_set
from dscnn.blocks.replk import RepLKConv
from dscnn.blocks.repvgg import RepVGGBlock

__all__ = [
    "ABLATION_BRANCH_SETS", "ACBlock", "BranchConv", "BranchSet", "RepASO", "RepLKConv", "RepSO",
    "RepVGGBlock", "parse_branch_set",
]
