"""Method registry: `@register_method("qr")` on a class makes it available to `build_collection` by name.

Every module in `embtables/methods/` is imported on first use, so adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

_METHODS: dict[str, type] = {}
_UNLISTED: set[str] = set()
_loaded = False

T = TypeVar("T", bound=type)


def register_method(name: str, listed: bool = True) -> Callable[[T], T]:
    """Class decorator registering a compression method under `name`.

    Args:
        name: the method's name (`build_collection(method=...)`, checkpoints).
        listed: False for a method that is a training stage of another (OptEmbed's supernet): `get_method` finds it,
            `list_methods` (sweeps, generated tests) does not.
    """

    def decorate(cls: T) -> T:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__qualname__}")
        cls.name = name  # type: ignore[attr-defined]
        _METHODS[name] = cls
        if not listed:
            _UNLISTED.add(name)
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import embtables.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True


def get_method(name: str) -> type:
    """The registered method class for `name`; `ValueError` listing the known names otherwise."""
    _load_all()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {list_methods()}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Names of the registered methods, sorted (not those registered with `listed=False`)."""
    _load_all()
    return sorted(set(_METHODS) - _UNLISTED)
