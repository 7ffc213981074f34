"""Named model constructors: ``create_model("semask_swin_tiny_fpn", num_classes=150)``."""
from __future__ import annotations

import functools

from .semask import VARIANTS, SeMaskSwin

_REGISTRY: dict = {}


def register(name: str, **defaults):
    _REGISTRY[name] = functools.partial(SeMaskSwin, **defaults)


for _variant in VARIANTS:
    register(f"semask_swin_{_variant}_fpn", variant=_variant, semantic=True)
    register(f"swin_{_variant}_fpn", variant=_variant, semantic=False)


def list_models() -> list[str]:
    """The names :func:`create_model` builds, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> SeMaskSwin:
    """Build a registered model; ``kwargs`` override the :class:`SeMaskSwin` arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
