"""The one contract for structural re-parameterization and the one walker that applies it."""

from __future__ import annotations

from torch import nn


class Reparameterizable(nn.Module):
    """A module with a training form that folds exactly into a plainer deployment form.

    Subclasses implement `reparameterize()`: build the fused layer, delete the branches, in place.
    It must be idempotent by checking state (`is_reparameterized`), never a constructor flag.
    """

    @property
    def is_reparameterized(self) -> bool:
        raise NotImplementedError

    def reparameterize(self) -> None:
        raise NotImplementedError


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Fuse every `Reparameterizable` in ``model`` in place (children first) and return it.

    Children go first so that a parent block folding its own parts sees already-fused children.
    Calling it again changes nothing. The model is put in eval mode: fusion reads BN running stats.
    """
    model.eval()
    _fuse_subtree(model)
    return model


def _fuse_subtree(module: nn.Module) -> None:
    for child in list(module.children()):
        _fuse_subtree(child)
    if isinstance(module, Reparameterizable):
        module.reparameterize()


def is_deploy_form(model: nn.Module) -> bool:
    """True when no `Reparameterizable` module in ``model`` is left unfused."""
    return all(m.is_reparameterized for m in model.modules() if isinstance(m, Reparameterizable))
