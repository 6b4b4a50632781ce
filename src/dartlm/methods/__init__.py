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


def get_method(config: MethodConfig) -> Method:
    try:
        cls = METHODS[config.name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {config.name!r}; available: {', '.join(METHODS)}") from None
    return cls(config)
