"""Re-parameterizable building blocks, one concept per file."""

from dscnn.blocks.acb import ACBlock
from dscnn.blocks.branch_conv import BranchConv
from dscnn.blocks.ffn import ConvFFN
from dscnn.blocks.refco import RefCO, refco_kernel, refco_weight_count
from dscnn.blocks.repaso import ABLATION_BRANCH_SETS, BranchSet, RepASO, RepSO, parse_branch_set
from dscnn.blocks.replk import RepLKConv
from dscnn.blocks.repmix import RepMiX
from dscnn.blocks.repvgg import RepVGGBlock
from dscnn.blocks.scconv import CRU, SRU, SCConv

__all__ = [
    "ABLATION_BRANCH_SETS", "ACBlock", "BranchConv", "BranchSet", "CRU", "ConvFFN", "RefCO", "RepASO",
    "RepLKConv", "RepMiX", "RepSO", "RepVGGBlock", "SCConv", "SRU", "parse_branch_set", "refco_kernel",
    "refco_weight_count",
]
