"""Dense multi-branch blocks (RepVGG, dense ACB): exact fast path vs per-branch reference (issue 12).

Forward + backward of one `BranchConv` in train mode at repvgg_a0's train shapes for a 32 px input
(stages 48/96/192 channels at 32/16/8 px with identity, the stride-2 first blocks, 1280 at 4 px),
plus dense ACB blocks, then whole repvgg_a0 training steps. Variants, timed side by side in one
process, one call of each per round in turn, median over rounds:

- ``reference``: one conv and one BN module per branch, summed (``branch_impl("reference")``);
- ``gram``: `dscnn.blocks.fast_dense` with the 1x1 branches and identity from x's Gram;
- ``explicit``: `dscnn.blocks.fast_dense` with every branch explicit (only BN/add passes fused);
- ``default``: what ``BranchConv.forward`` runs now (the reference for dense blocks: the fast path
  is not wired in, see the README); whole-step rows compare ``reference`` with ``fast_dense``, every
  dense `BranchConv` of the model patched onto `fast_dense_sum` (its default Gram rule).

The heap is pinned first (`dscnn.allocator.pin_malloc`, as training does). Run under
``flock /tmp/repnas-cpu-bench.lock`` on a quiet machine; only ratios mean something.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from dscnn import create_model
from dscnn.allocator import pin_malloc
from dscnn.blocks import ACBlock, RepVGGBlock
from dscnn.blocks.branch_conv import BranchConv
from dscnn.blocks.fast_branch import branch_impl
from dscnn.blocks.fast_dense import applies_dense, fast_dense_sum

#: (name, block factory, input channels, input size): repvgg_a0's BranchConvs at a 32 px input (stem
#: stride 1 there; "xN": N such blocks in the model), and two dense ACBs.
BLOCKS: list[tuple[str, Callable[[], BranchConv], int, int]] = [
    ("repvgg s1 3->48 @32 (x1)", lambda: RepVGGBlock(3, 48).conv, 3, 32),
    ("repvgg s1 id 48 @32 (x2)", lambda: RepVGGBlock(48, 48).conv, 48, 32),
    ("repvgg s2 48->96 @32 (x1)", lambda: RepVGGBlock(48, 96, stride=2).conv, 48, 32),
    ("repvgg s1 id 96 @16 (x3)", lambda: RepVGGBlock(96, 96).conv, 96, 16),
    ("repvgg s2 96->192 @16 (x1)", lambda: RepVGGBlock(96, 192, stride=2).conv, 96, 16),
    ("repvgg s1 id 192 @8 (x13)", lambda: RepVGGBlock(192, 192).conv, 192, 8),
    ("repvgg s2 192->1280 @8 (x1)", lambda: RepVGGBlock(192, 1280, stride=2).conv, 192, 8),
    ("acb3 64 @16", lambda: ACBlock(64, 64, 3), 64, 16),
    ("acb5 64 @16", lambda: ACBlock(64, 64, 5), 64, 16),
]


def _block_step(block: BranchConv, x: torch.Tensor, grad: torch.Tensor, variant: str) -> Callable[[], None]:
    def run() -> None:
        xi = x.detach().requires_grad_(True)
        if variant == "reference":
            with branch_impl("reference"):
                y = block(xi)
        elif variant == "default":
            y = block(xi)
        else:
            y = fast_dense_sum(block, xi, gram=variant == "gram")
        y.backward(grad)  # a dense gradient, as in a network (y.sum()'s is a stride-0 expand)
        block.zero_grad(set_to_none=True)
    return run


@contextmanager
def _dense_wired() -> Iterator[None]:
    """Every train-mode dense `BranchConv` runs `fast_dense_sum` inside the block."""
    original = BranchConv.forward

    def forward(self: BranchConv, x: torch.Tensor) -> torch.Tensor:
        return fast_dense_sum(self, x) if applies_dense(self, x) else original(self, x)

    BranchConv.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        BranchConv.forward = original  # type: ignore[method-assign]


def _model_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, variant: str) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run() -> None:
        if variant == "reference":
            with branch_impl("reference"):
                loss = nn.functional.cross_entropy(model(x), labels)
        else:
            with _dense_wired():
                loss = nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def _median_ms(steps: dict[str, Callable[[], None]], rounds: int, repeat: int) -> dict[str, float]:
    for step in steps.values():  # warm-up (oneDNN primitive creation)
        step()
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(repeat):
                step()
            times[name].append((time.perf_counter() - start) * 1e3 / repeat)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per block (median)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per timing")
    parser.add_argument("--model-rounds", type=int, default=11, help="alternating rounds of the whole step")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_fast_path.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pinned = pin_malloc()  # as training does: otherwise large buffers page-fault back in every step
    torch.manual_seed(0)
    rows = []
    variants = ("reference", "gram", "explicit", "default")
    print(f"{'block':28} {'format':15} " + " ".join(f"{v + ' ms':>13}" for v in variants) + "  gram/ref  expl/ref")
    for fmt_name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        for name, make, channels, size in BLOCKS:
            block = make().train().to(memory_format=fmt)
            x = (torch.randn(args.batch, channels, size, size)).relu().contiguous(memory_format=fmt)
            with torch.no_grad():
                grad = torch.randn_like(block(x)).contiguous(memory_format=fmt)
            ms = _median_ms({v: _block_step(block, x, grad, v) for v in variants}, args.rounds, args.repeat)
            rows.append({"block": name, "format": fmt_name, "batch": args.batch, "ms": ms})
            print(f"{name:28} {fmt_name:15} " + " ".join(f"{ms[v]:13.3f}" for v in variants)
                  + f"  {ms['gram'] / ms['reference']:8.3f}  {ms['explicit'] / ms['reference']:8.3f}")
    steps = []
    if not args.skip_model:
        for fmt_name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            model = create_model("repvgg_a0", num_classes=10, resolution=32).train().to(memory_format=fmt)
            x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=fmt)
            labels = torch.randint(0, 10, (args.batch,))
            models = {v: copy.deepcopy(model) for v in ("reference", "fast_dense")}
            ms = _median_ms({v: _model_step(m, x, labels, v) for v, m in models.items()}, args.model_rounds, 1)
            steps.append({"model": "repvgg_a0", "format": fmt_name, "batch": args.batch, "ms": ms})
            print(f"repvgg_a0 step {fmt_name:15} reference {ms['reference']:.1f} ms  fast_dense {ms['fast_dense']:.1f}"
                  f" ms  fast_dense/reference {ms['fast_dense'] / ms['reference']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python", *sys.argv]), "threads": args.threads, "malloc_pinned": pinned,
              "rounds": args.rounds, "repeat": args.repeat, "model_rounds": args.model_rounds,
              "torch": torch.__version__, "blocks": rows, "steps": steps}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
