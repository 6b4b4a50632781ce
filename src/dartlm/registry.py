"""The method registry: name -> method class. It sits below the config, which reads a method's own settings from
it, and imports nothing of dartlm at load time.

The built-in methods (dartlm.methods) register themselves when that package is imported; the first lookup imports
it, as a plugin registry loads its plugins, so that a config can be read before anything else was imported. A
method defined elsewhere registers with `register_method` (also usable as a class decorator).
"""

from __future__ import annotations

import importlib

METHODS: dict[str, type] = {}
_BUILTINS = "dartlm.methods"


def register_method(cls: type, *, replace: bool = False) -> type:
    """Make a method class available by its `name`, to configs and every command."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"{cls.__name__}: a method needs a name")
    if cls.name in METHODS and METHODS[cls.name] is not cls and not replace:
        raise ValueError(f"a method named {cls.name!r} is already registered ({METHODS[cls.name].__name__})")
    METHODS[cls.name] = cls
    return cls


def registered() -> dict[str, type]:
    """Every registered method (the built-in ones loaded first)."""
    importlib.import_module(_BUILTINS)
    return METHODS


def method_class(name: str) -> type | None:
    """The class registered under `name`, or None."""
    return registered().get(name)
