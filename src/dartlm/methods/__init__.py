"""Every method, listed in one mapping: name -> class."""

from __future__ import annotations

from dartlm.config import ConfigError, MethodConfig
from dartlm.methods.base import Method
from dartlm.methods.coconut import CoconutMethod
from dartlm.methods.codi import CodiMethod
from dartlm.methods.dart import DartMethod
from dartlm.methods.icot import IcotMethod
from dartlm.methods.quiet_star import FastQuietStarMethod, FqsNtpMethod, QuietStarMethod
from dartlm.methods.sft import CotMethod, NoCotMethod, PauseMethod

METHODS: dict[str, type[Method]] = {
    "dart": DartMethod,
    "cot": CotMethod,
    "nocot": NoCotMethod,
    "pause": PauseMethod,
    "icot": IcotMethod,
    "coconut": CoconutMethod,
    "codi": CodiMethod,
    "quiet-star": QuietStarMethod,
    "fast-quiet-star": FastQuietStarMethod,
    "fqs-ntp": FqsNtpMethod,
}


def register_method(cls: type[Method], *, replace: bool = False) -> type[Method]:
    """Make a method class available by its `name`, to configs and every command (usable as a class decorator).

    A method that decodes like an existing one ("answer" or "cot") needs nothing else: training, export, the model
    card (its `title` and `description`), evaluation and generation all go through the Method interface.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a method needs a name")
    if cls.name in METHODS and METHODS[cls.name] is not cls and not replace:
        raise ValueError(f"a method named {cls.name!r} is already registered ({METHODS[cls.name].__name__})")
    METHODS[cls.name] = cls
    return cls


def get_method(config: MethodConfig) -> Method:
    try:
        cls = METHODS[config.name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {config.name!r}; available: {', '.join(METHODS)}") from None
    return cls(config)
