"""Every built-in method, registered by name (dartlm.registry) when this package is imported."""

from __future__ import annotations

from dartlm.config import ConfigError, MethodConfig
from dartlm.methods.base import Method
from dartlm.methods.coconut import CoconutMethod
from dartlm.methods.codi import CodiMethod
from dartlm.methods.dart import DartMethod
from dartlm.methods.icot import IcotMethod
from dartlm.methods.quiet_star import FastQuietStarMethod, FqsNtpMethod, QuietStarMethod
from dartlm.methods.sft import CotMethod, NoCotMethod, PauseMethod
from dartlm.registry import METHODS, register_method

for _cls in (DartMethod, CotMethod, NoCotMethod, PauseMethod, IcotMethod, CoconutMethod, CodiMethod, QuietStarMethod,
             FastQuietStarMethod, FqsNtpMethod):
    register_method(_cls)


def get_method(config: MethodConfig) -> Method:
    try:
        cls = METHODS[config.name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {config.name!r}; available: {', '.join(METHODS)}") from None
    return cls(config)


__all__ = ["METHODS", "Method", "get_method", "register_method"]
