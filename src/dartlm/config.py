"""Run configuration: YAML files mapped onto typed dataclasses, with `section.key=value` overrides.

Unknown keys and wrong types are errors that name the file and the key, raised before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dartlm import registry

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names where."""


@dataclass
class ModelConfig:
    # A hub name, a local folder or an alias: pretrained weights are loaded from it.
    name_or_path: str = ""
    # transformers config fields (with model_type). Without name_or_path: build a random-initialised model from
    # them. With it: only `dartlm params` uses them, so that the report needs no download.
    architecture: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""  # defaults to name_or_path
    dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class LoraSection:
    enabled: bool = True
    rank: int = 128
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # empty: the architecture's attention projections


@dataclass
class RemSection:
    enabled: bool = True  # false: the "without REM" ablation
    rank: int = 128
    alpha: float = 32.0
    # input: REM (paper section 3.2). output: a LoRA on k/v active only on the ST pathway ("REM -> LoRA", Table 3).
    placement: str = "input"


DISTILL_POSITIONS = ("z_n", "y_1", "z_n_and_answer")


@dataclass
class MethodConfig:
    name: str = "dart"
    num_thought_tokens: int = 20  # C: <st> tokens for dart, <pause> tokens for pause, continuous thoughts for codi
    separator: str = "Answer:"
    distill_weight: float = 20.0  # lambda
    detach_teacher: bool = True
    # Where the hidden states are matched: z_n (the paper), y_1 (first answer token) or z_n_and_answer ([z_N; Y]);
    # the last two are Table 3's ablations.
    distill_at: str = "z_n"
    # Guards against distillation collapse (DART, CODI; methods/distill_guards.py); the defaults are the paper's.
    # distill_grad: "all" (L_distill trains every trainable weight) or "student" (only the weights that exist on the
    # student side alone: REM, CODI's projection). distill_start / distill_ramp: lambda is 0 for that fraction of
    # the training steps, then rises linearly to distill_weight over the next distill_ramp.
    distill_grad: str = "all"
    distill_start: float = 0.0
    distill_ramp: float = 0.0
    # A warning (training goes on) when the logged teacher_spread falls below this: the signature of collapse
    # (collapsed runs end at 7e-4 to 8e-3, healthy ones at 0.03 to 0.2; benchmarks/README.md). 0: never.
    collapse_warning_spread: float = 0.01
    # The method's own settings (iCoT's schedule, Quiet-STaR's thoughts, ...): an instance of its class's
    # `settings_class`, written flat beside the fields above in a config file (`method.quiet_n_ahead: 12`).
    settings: Any = None

    def __post_init__(self):
        wanted = own_settings_class(self.name)
        if wanted is not None and not isinstance(self.settings, wanted):
            self.settings = wanted()
        elif wanted is None and self.name in registry.registered():
            self.settings = None


@dataclass
class MethodSettings:
    """A method's own settings: subclass it as a dataclass, with a comment per field, set it as the method class's
    `settings_class`, and check the values in `validate` (errors name `method.<field>`)."""

    def validate(self, where: str) -> None:
        """Raise ConfigError for a value the method cannot train with."""


def own_settings_class(method: str) -> type | None:
    """The settings dataclass of a registered method, or None (no settings of its own, or no such method)."""
    cls = registry.method_class(method)
    return getattr(cls, "settings_class", None) if cls is not None else None


COMMON_METHOD_FIELDS = frozenset(f.name for f in dataclasses.fields(MethodConfig)) - {"settings"}


def method_from_dict(data: Any, where: str) -> MethodConfig:
    """The method section: its common fields and the named method's own, each checked as everywhere else.

    A key of another method's settings is an error when it is set to anything but its default; at its default it
    is ignored (run folders written before the settings were split list every method's fields).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: method: expected a mapping, got {type(data).__name__} {data!r}")
    name = data.get("name", MethodConfig.name)
    if not isinstance(name, str) or registry.method_class(name) is None:
        raise ConfigError(f"{where}: method.name: unknown method {name!r}; available: "
                          f"{', '.join(registry.registered())}")
    own = own_settings_class(name)
    own_fields = {f.name for f in dataclasses.fields(own)} if own else set()
    common, mine = {}, {}
    for key, value in data.items():
        if key in COMMON_METHOD_FIELDS:
            common[key] = value
        elif key in own_fields:
            mine[key] = value
        else:
            owner = _owner_of(key)
            if owner is None:
                names = ", ".join(sorted(COMMON_METHOD_FIELDS | own_fields))
                raise ConfigError(f"{where}: unknown key(s) method.{shown(str(key))} (known for method {name}: "
                                  f"{names})")
            default = next(f for f in dataclasses.fields(owner[1]) if f.name == key)
            default = default.default_factory() if default.default is dataclasses.MISSING else default.default
            if value != default:
                raise ConfigError(f"{where}: method.{key}: a setting of method {owner[0]}, not of {name}")
    config = from_dict(MethodConfig, common, where, "method.")
    config.settings = from_dict(own, mine, where, "method.") if own else None
    return config


def _owner_of(key: str) -> tuple[str, type] | None:
    """(method name, settings class) of the registered method whose settings have field `key`."""
    for method, cls in registry.registered().items():
        own = getattr(cls, "settings_class", None)
        if own is not None and key in {f.name for f in dataclasses.fields(own)}:
            return method, own
    return None


@dataclass
class DataConfig:
    train_path: str = ""
    eval_path: str = ""
    format: str = "auto"  # auto | icot | jsonl | coconut
    omit_last_step: bool = True  # drop the final CoT step of training examples (CODI's rule, used by the paper)
    max_length: int = 512  # longer examples are an error, unless drop_long
    drop_long: bool = False  # drop (and count) examples longer than max_length
    skip_invalid: bool = False  # skip (and count) malformed records instead of stopping
    numeric_answers: bool = False  # every answer must be a number (GSM8K-style data): checked while reading


@dataclass
class TrainingConfig:
    output_dir: str = ""  # the run folder; default runs/<config name>
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # per device
    grad_accum: int = 1
    lr: float = 8e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2  # 0 keeps every checkpoint
    bf16: bool | str = "auto"  # "auto": on when a CUDA device supports it
    dataloader_workers: int = 0
    progress_bar: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    rem: RemSection = field(default_factory=RemSection)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def set(self, key: str, value, where: str = "override") -> None:
        """Set `section.key` to value, checked and coerced as in a config file (unknown keys are an error)."""
        section_name, _, name = key.partition(".")
        section = getattr(self, section_name, None) if section_name in {f.name for f in dataclasses.fields(self)} \
            else None
        if section is None or not name:
            raise ConfigError(f"{where}: unknown key {key!r} (sections: "
                              f"{', '.join(f.name for f in dataclasses.fields(self))})")
        if section_name == "method" and name not in COMMON_METHOD_FIELDS:
            self._set_method_setting(key, name, value, where)
            return
        hints = typing.get_type_hints(type(section))
        if name not in hints:
            raise ConfigError(f"{where}: unknown key {key!r} (known in {section_name}: {', '.join(hints)})")
        setattr(section, name, coerce_value(hints[name], value, where, key))
        if key == "method.name":  # another method: its own settings, at their defaults
            self.method.__post_init__()

    def _set_method_setting(self, key: str, name: str, value, where: str) -> None:
        own = self.method.settings
        hints = typing.get_type_hints(type(own)) if own is not None else {}
        if name not in hints:
            owner = _owner_of(name)
            if owner is not None:
                raise ConfigError(f"{where}: {key}: a setting of method {owner[0]}, not of {self.method.name}")
            known = ", ".join(sorted(COMMON_METHOD_FIELDS | set(hints)))
            raise ConfigError(f"{where}: unknown key {key!r} (known for method {self.method.name}: {known})")
        setattr(own, name, coerce_value(hints[name], value, where, key))

    def validate(self, where: str = "config") -> "Config":
        if not self.model.name_or_path and not self.model.architecture:
            raise ConfigError(f"{where}: model: set model.name_or_path (pretrained) or model.architecture (random init)")
        if self.method.num_thought_tokens < 0:
            raise ConfigError(f"{where}: method.num_thought_tokens must be >= 0, got {self.method.num_thought_tokens}")
        for section, value in (("lora.rank", self.lora.rank), ("rem.rank", self.rem.rank)):
            if value <= 0:
                raise ConfigError(f"{where}: {section} must be > 0, got {value}")
        self._check_ranges(where)
        if self.training.bf16 not in (True, False, "auto"):
            raise ConfigError(f"{where}: training.bf16 must be auto, true or false, got {self.training.bf16!r}")
        if self.rem.placement not in ("input", "output"):
            raise ConfigError(f"{where}: rem.placement must be input or output, got {self.rem.placement!r}")
        if self.method.distill_at not in DISTILL_POSITIONS:
            raise ConfigError(f"{where}: method.distill_at must be one of {', '.join(DISTILL_POSITIONS)}, "
                              f"got {self.method.distill_at!r}")
        m = self.method
        if m.distill_grad not in ("all", "student"):
            raise ConfigError(f"{where}: method.distill_grad must be all or student, got {m.distill_grad!r}")
        if not (0 <= m.distill_start <= 1 and 0 <= m.distill_ramp <= 1):
            raise ConfigError(f"{where}: method.distill_start and method.distill_ramp are fractions of training in "
                              f"[0, 1], got {m.distill_start} and {m.distill_ramp}")
        if not m.separator.strip() or any(ch.isdigit() for ch in m.separator):
            # the strict score reads the answer right after the last separator: it must be visible text without
            # digits (a digit in it would be read as part of an answer)
            raise ConfigError(f"{where}: method.separator must be non-blank text without digits, got {m.separator!r}")
        if m.collapse_warning_spread < 0:
            raise ConfigError(f"{where}: method.collapse_warning_spread must be >= 0, got {m.collapse_warning_spread}")
        if m.distill_grad == "student" and m.name == "dart" and not self.rem.enabled:
            raise ConfigError(f"{where}: method.distill_grad=student routes L_distill into REM, but rem.enabled is "
                              "false")
        cls = registry.method_class(m.name)
        if cls is None:
            raise ConfigError(f"{where}: method.name: unknown method {m.name!r}; available: "
                              f"{', '.join(registry.registered())}")
        if m.settings is not None:
            m.settings.validate(where)
        if self.model.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"{where}: model.dtype must be float32, bfloat16 or float16, got {self.model.dtype!r}")
        return self


    def _check_ranges(self, where: str) -> None:
        """Numbers that would only fail (or silently misbehave) deep inside training: refused here, before any run
        folder is written."""
        t, m = self.training, self.method

        def finite(value) -> bool:
            return isinstance(value, (int, float)) and math.isfinite(value)

        rules = [
            ("training.lr", t.lr, finite(t.lr) and t.lr > 0, "a finite number > 0"),
            ("training.epochs", t.epochs, finite(t.epochs) and t.epochs > 0, "a finite number > 0"),
            ("training.max_steps", t.max_steps, t.max_steps == -1 or t.max_steps > 0, "> 0, or -1 to use epochs"),
            ("training.batch_size", t.batch_size, t.batch_size >= 1, ">= 1"),
            ("training.grad_accum", t.grad_accum, t.grad_accum >= 1, ">= 1"),
            ("training.weight_decay", t.weight_decay, finite(t.weight_decay) and t.weight_decay >= 0,
             "a finite number >= 0"),
            ("training.warmup_ratio", t.warmup_ratio, finite(t.warmup_ratio) and 0 <= t.warmup_ratio < 1,
             "a fraction in [0, 1)"),
            ("training.max_grad_norm", t.max_grad_norm, finite(t.max_grad_norm) and t.max_grad_norm > 0,
             "a finite number > 0"),
            ("training.logging_steps", t.logging_steps, t.logging_steps >= 1, ">= 1"),
            ("training.save_steps", t.save_steps, t.save_steps >= 1, ">= 1"),
            ("training.save_total_limit", t.save_total_limit, t.save_total_limit >= 0, ">= 0 (0 keeps all)"),
            ("training.dataloader_workers", t.dataloader_workers, t.dataloader_workers >= 0, ">= 0"),
            ("data.max_length", self.data.max_length, self.data.max_length >= 1, ">= 1"),
            ("lora.alpha", self.lora.alpha, finite(self.lora.alpha) and self.lora.alpha > 0, "a finite number > 0"),
            ("lora.dropout", self.lora.dropout, finite(self.lora.dropout) and 0 <= self.lora.dropout < 1,
             "a fraction in [0, 1)"),
            ("rem.alpha", self.rem.alpha, finite(self.rem.alpha) and self.rem.alpha > 0, "a finite number > 0"),
            ("method.distill_weight", m.distill_weight, finite(m.distill_weight) and m.distill_weight >= 0,
             "a finite number >= 0"),
        ]
        for name, value, ok, wanted in rules:
            if not ok:
                raise ConfigError(f"{where}: {name} must be {wanted}, got {value!r}")


def resolve_config_path(name: str | Path) -> Path:
    """A path to a YAML file, or the name of a packaged config (e.g. `paper/llama-3.2-1b-dart`)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    available = sorted(str(p.relative_to(PACKAGED_CONFIGS).with_suffix("")) for p in PACKAGED_CONFIGS.rglob("*.yaml"))
    raise ConfigError(f"no config file {str(name)!r} and no packaged config of that name; packaged: {', '.join(available)}")


def load_config(name: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config (path or packaged name), apply `section.key=value` overrides, check it.

    A config may start from another with `inherit: <path or packaged name>` and then set only what differs
    (the paper's ablations are one key away from DART).
    """
    path = resolve_config_path(name)
    raw = read_raw_config(path)
    for override in overrides:
        apply_override(raw, override)
    return from_dict(Config, raw, str(path)).validate(str(path))


def read_raw_config(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping of one YAML file, merged over the one it inherits from (sections merged key by key)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: inherit: cycle through {', '.join(str(p) for p in seen)}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    parent_name = raw.pop("inherit", None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str):
        raise ConfigError(f"{path}: inherit: expected a config name or path, got {parent_name!r}")
    sibling = path.parent / parent_name
    parent_path = sibling if sibling.is_file() else resolve_config_path(parent_name)
    merged = read_raw_config(parent_path, seen + (path.resolve(),))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            parent = merged[section]
            if section == "method" and values.get("name", parent.get("name")) != parent.get("name"):
                # Another method: of the parent's method-specific settings, only those this one has too carry over.
                own = own_settings_class(values["name"]) if isinstance(values["name"], str) else None
                keep = COMMON_METHOD_FIELDS | ({f.name for f in dataclasses.fields(own)} if own else set())
                parent = {k: v for k, v in parent.items() if k in keep}
            merged[section] = {**parent, **values}
        else:
            merged[section] = values
    return merged


def apply_override(raw: dict, override: str) -> None:
    """Set `section.key=value` in the raw mapping; the value is parsed as YAML (so 1e-4, true, [a, b] work)."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"override {override!r}: invalid value: {' '.join(str(err).split()) or 'nested too deeply'}"
                          ) from None


def from_dict(cls: type, data: Any, where: str, prefix: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type.

    Errors read "<file>: <section.key>: <problem>".
    """
    if not isinstance(data, dict):
        label = prefix.rstrip(".") or "top level"
        raise ConfigError(f"{where}: {label}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        names = ", ".join(shown(prefix + str(k)) for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {names} (known here: {', '.join(sorted(known))})")
    values = {name: coerce_value(hints[name], value, where, prefix + name) for name, value in data.items()}
    return cls(**values)


def shown(name: str) -> str:
    """A key as written in messages: as is when printable, quoted otherwise (an error stays one line)."""
    return name if name.isprintable() else repr(name)


def coerce_value(hint, value, where: str, label: str):
    """Check (and lightly convert: int -> float) one value against its annotation."""
    if hint is MethodConfig:
        return method_from_dict(value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, label + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        errors = []
        for option in options:
            try:
                return coerce_value(option, value, where, label)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {label}: expected a list, got {type(value).__name__} {value!r}")
        return [coerce_value(item, v, where, f"{label}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {label}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong = (hint is int and isinstance(value, bool)) or not isinstance(value, hint)
    if wrong and hint is float and isinstance(value, str) and _is_number(value):
        return float(value)  # YAML 1.1 reads 1e-4 and 1.0e6 (no dot, or an unsigned exponent) as text
    if wrong:
        raise ConfigError(f"{where}: {label}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_dict(config) -> dict:
    """The config as plain data (for writing the resolved config of a run): the method's own settings written flat
    in its section, as a config file has them."""
    data = dataclasses.asdict(config)
    method = data.get("method")
    if isinstance(method, dict):
        method.update(method.pop("settings") or {})
    return data
