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
    """Build a registered model; ``kwargs`` are further :class:`SeMaskSwin` arguments (not
    the variant and semantic layers the name fixes)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    fixed = _REGISTRY[name].keywords
    clash = {k: v for k, v in kwargs.items() if k in fixed and v != fixed[k]}
    if clash:
        raise ValueError(f"{name} is built with {', '.join(f'{k}={fixed[k]!r}' for k in clash)}, not "
                         f"{', '.join(f'{k}={v!r}' for k, v in clash.items())}: choose another name "
                         "(semask.list_models()) or build semask.SeMaskSwin(...)")
    return _REGISTRY[name](**kwargs)
