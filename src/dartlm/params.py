"""The trainable-parameter report of a DART config, computed on the meta device (no weights are loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from dartlm.config import Config
from dartlm.model.adapters import LoraSettings, attach_adapters, count_parameters
from dartlm.model.loading import build_meta_model
from dartlm.model.rem import RemSettings


@dataclass(frozen=True)
class ParameterReport:
    base: int
    lora: int
    rem: int
    st_embedding_rows: int  # rows added for <st>; frozen by default

    @property
    def trainable(self) -> int:
        return self.lora + self.rem

    def table(self) -> str:
        pct = 100.0 * self.trainable / self.base
        rows = [
            ("base model", self.base),
            ("LoRA", self.lora),
            ("REM", self.rem),
            ("trainable total", self.trainable),
        ]
        width = max(len(f"{v:,}") for _, v in rows)
        lines = [f"{name:<16} {value:>{width},}" for name, value in rows]
        lines.append(f"{'trainable / base':<16} {pct:>{width - 1}.2f}%")
        lines.append(f"(+{self.st_embedding_rows} frozen embedding row(s) for <st>; merged away at export: REM and LoRA add 0)")
        return "\n".join(lines)


def parameter_report(config: Config) -> ParameterReport:
    """Build the model on the meta device, attach LoRA and REM as training would, and count."""
    model = build_meta_model(config.model)
    base = sum(p.numel() for p in model.parameters())
    lora = _lora_settings(config)
    rem = RemSettings(config.rem.rank, config.rem.alpha) if config.rem.enabled and config.method.name == "dart" else None
    counts = count_parameters(attach_adapters(model, lora, rem))
    return ParameterReport(base=base, lora=counts["lora"], rem=counts["rem"], st_embedding_rows=1)


def _lora_settings(config: Config) -> LoraSettings | None:
    if not config.lora.enabled:
        return None
    section = config.lora
    return LoraSettings(section.rank, section.alpha, section.dropout, tuple(section.target_modules))
