"""The trainable-parameter report of a config, computed on the meta device (no weights are loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from dartlm.config import Config
from dartlm.methods import get_method
from dartlm.model.adapters import attach_adapters, count_parameters
from dartlm.model.loading import build_meta_model
from dartlm.training.prepare import lora_settings, rem_settings


@dataclass(frozen=True)
class ParameterReport:
    base: int
    lora: int
    rem: int
    added_embedding_rows: int  # rows for the method's thought token; frozen by default

    @property
    def trainable(self) -> int:
        return self.lora + self.rem

    def table(self) -> str:
        rows = [("base model", self.base), ("LoRA", self.lora), ("REM", self.rem), ("trainable total", self.trainable)]
        width = max(len(f"{v:,}") for _, v in rows)
        lines = [f"{name:<16} {value:>{width},}" for name, value in rows]
        lines.append(f"{'trainable / base':<16} {100.0 * self.trainable / self.base:>{width - 1}.2f}%")
        if self.added_embedding_rows:
            lines.append(f"(+{self.added_embedding_rows} frozen embedding row for the thought token)")
        lines.append("After export (LoRA and REM merged into the weights) inference adds 0 parameters.")
        return "\n".join(lines)


def parameter_report(config: Config) -> ParameterReport:
    """Build the model on the meta device, attach LoRA and REM as training would, and count."""
    method = get_method(config.method)
    model = build_meta_model(config.model)
    base = sum(p.numel() for p in model.parameters())
    counts = count_parameters(attach_adapters(model, lora_settings(config), rem_settings(config, method)))
    return ParameterReport(base, counts["lora"], counts["rem"], 1 if method.thought_token else 0)
