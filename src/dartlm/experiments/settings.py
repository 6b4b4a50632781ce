"""The experiments' settings: one dataclass (DemoSettings) for the task, the model, the base and the budget that every
method shares, `--set FIELD=VALUE` assignments on it, and the run config of one method under them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dartlm.config import Config, MethodConfig
from dartlm.exports.run import export_run
from dartlm.model.adapters import LLAMA_STYLE_TARGETS
from dartlm.training.run import train

METHODS = ("nocot", "cot", "pause", "dart")
# LoRA targets of the demo's Llama-style model: the paper's (attention), or every linear layer of the blocks.
LORA_TARGETS = {"attention": LLAMA_STYLE_TARGETS, "all": LLAMA_STYLE_TARGETS + ("gate_proj", "up_proj", "down_proj")}


@dataclass
class DemoSettings:
    # The task (chosen before looking at DART's numbers: the smallest setting at which CoT beats No-CoT by
    # 30 points at this scale; see benchmarks/README.md).
    task_steps: int = 3
    max_value: int = 9
    operations: str = "+-"
    n_train: int = 4000
    n_val: int = 200
    n_test: int = 200
    # The model, trained from scratch.
    vocab_size: int = 1024
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    # 0: every method trains the model from scratch (full training). > 0: first a shared base model is trained from
    # scratch on the problems' text for this many steps, then every method fine-tunes it with LoRA, as in the paper.
    pretrain_steps: int = 0
    # > 0: the paper's regime. A base model of the shape above is pretrained (once, cached: model/base_lm.py) for
    # this many steps on general arithmetic text that is not the task; every method fine-tunes it with LoRA, the
    # base frozen. The base is the same for every seed, as one pretrained LLM is in the paper.
    base_steps: int = 3000  # chosen on the validation split with No-CoT and CoT only (benchmarks/README.md)
    # The base's own seed (initialisation, corpus order). Another seed stands in for another machine: the base a
    # different CPU builds differs from ours by rounding, and a regime worth reporting survives either.
    base_seed: int = 0
    # A pretrained model (hub name, folder or alias such as smollm2-135m) that every method fine-tunes with LoRA
    # instead; the shape fields above then do not apply.
    base_model: str = ""
    lora_targets: str = "attention"  # attention (the paper) | all (attention and MLP projections)
    # The same budget for every method.
    train_steps: int = 500
    lora_rank: int = 32
    lora_alpha: float = 8.0  # alpha / r = 0.25, the paper's ratio (32 / 128)
    batch_size: int = 32
    # 1e-2 for LoRA on the base, chosen on validation with No-CoT and CoT; the from-scratch demo used 2e-3.
    lr: float = 1e-2
    warmup_ratio: float = 0.03  # share of the steps over which the learning rate rises linearly from 0
    num_thought_tokens: int = 8
    # True: the final CoT step is dropped from training examples (CODI's rule, used by the paper): a CoT model
    # writes all but the last step and computes that one in the pass that writes the answer. False (ours): the
    # whole chain is written, and the answer is copied from its last step.
    omit_last_step: bool = True
    # The text between the reasoning (or the thoughts) and the answer, which a CoT model writes itself and the
    # strict score reads the answer after. "Answer:" (the default) is what the paper's prompts say. Ours: another
    # one, e.g. "The result is", which the general arithmetic base already writes (its tokenizer has no token for
    # "Answer", so a CoT model must spell it from five pieces, and some fine-tuned bases misspell it).
    separator: str = "Answer:"
    rem_rank: int = 32
    rem_alpha: float = 8.0  # alpha / d = 0.25, the paper's ratio (32 / 128)
    distill_weight: float = 20.0
    # Guards against distillation collapse (methods/distill_guards.py); the defaults are the paper's.
    distill_grad: str = "all"
    distill_start: float = 0.0
    distill_ramp: float = 0.0
    seed: int = 0
    # > 0: a checkpoint every this many steps, from which `dartlm compare` resumes a killed run (long benchmarks).
    save_every: int = 0
    # Questions of the evaluated split that `dartlm demo` times side by side at batch size 1 (not a training
    # setting: no job's result depends on it).
    latency_items: int = 100
    methods: tuple[str, ...] = METHODS

    @classmethod
    def quick(cls) -> "DemoSettings":
        """About a minute: a smoke run of the whole pipeline, not a result."""
        return cls(task_steps=2, max_value=20, n_train=400, n_val=20, n_test=24, hidden=64, layers=2,
                   base_steps=30, train_steps=30, batch_size=16, num_thought_tokens=4, rem_rank=8, rem_alpha=2.0,
                   lora_rank=8, lora_alpha=2.0, latency_items=6)


# Settings added after results or data folders were written, at the value every earlier one was made with: an
# identity (a job's fingerprint, a data folder's manifest) leaves them out at that value, so that what was written
# before stays valid and is never mixed with what another value makes.
LATER_SETTINGS = {"omit_last_step": True, "separator": "Answer:"}


def identity(settings: DemoSettings, names) -> dict:
    """The named settings' values, without those still at their LATER_SETTINGS value."""
    return {name: getattr(settings, name) for name in names
            if not (name in LATER_SETTINGS and getattr(settings, name) == LATER_SETTINGS[name])}


def apply_settings(settings: DemoSettings, assignments: list[str] | tuple[str, ...]) -> DemoSettings:
    """The settings with `field=value` assignments applied (`--set` on the command line).

    Values are read as YAML and checked against the field's type like a config file's (so `lr=3e-3`,
    `lora_targets=all` and `n_train=16000` work, and `lr=x` or an unknown field is one clear error).
    """
    import dataclasses
    import typing

    import yaml

    from dartlm.config import ConfigError, coerce_value

    hints = typing.get_type_hints(DemoSettings)
    changes: dict = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set {assignment!r}: expected field=value")
        if name not in hints:
            raise ConfigError(f"--set {assignment!r}: unknown demo setting {name!r}; known: {', '.join(hints)}")
        try:
            # a text field takes the text as given (YAML would read "Answer:" as a mapping and "####" as a
            # comment), unless it is quoted
            quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
            value = text.strip() if hints[name] is str and not quoted else yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {assignment!r}: invalid value: {str(err).splitlines()[0]}") from None
        if name == "methods":
            value = tuple(str(value).split(",")) if not isinstance(value, list) else tuple(value)
            unknown = [m for m in value if m not in METHODS]
            if unknown:
                raise ConfigError(f"--set {assignment!r}: unknown method(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(METHODS)}")
        else:
            value = coerce_value(hints[name], value, "--set", name)
        changes[name] = value
    return dataclasses.replace(settings, **changes)


# Settings the commands offer as flags of their own (`--lr 3e-3`); every field is also `--set FIELD=VALUE`.
FLAG_FIELDS = ("task_steps", "max_value", "operations", "train_steps", "seed", "pretrain_steps", "distill_weight",
               "base_steps", "lora_targets", "layers", "lr", "batch_size", "base_model", "save_every", "methods")


def settings_from_options(options: dict, assignments=(), *, quick: bool = False) -> DemoSettings:
    """The settings a command asks for: the defaults (or the quick ones), the flags that were given (None: not
    given), then the `--set` assignments; each value checked by the same parser.

    A base trained on the task's text (pretrain_steps) or a given pretrained model (base_model) replaces the general
    arithmetic base unless base_steps is given too.
    """
    import json

    # JSON is YAML: a flag's typed value goes through apply_settings' parser as it was given
    given = [f"{name}={json.dumps(options[name])}" for name in FLAG_FIELDS if options.get(name) is not None]
    if (options.get("pretrain_steps") or options.get("base_model")) and options.get("base_steps") is None:
        given.append("base_steps=0")
    return apply_settings(DemoSettings.quick() if quick else DemoSettings(), given + list(assignments))


def method_config(settings: DemoSettings, method: str, data_dir: Path, run_dir: Path, base_dir: Path | None,
                  steps: int) -> Config:
    """The run config of one method: same model, data and budget for all.

    base_dir None: a model trained from scratch (every weight trains); otherwise LoRA fine-tuning of that base.
    """
    config = Config()
    if base_dir is None:
        config.model.tokenizer = str(data_dir / "tokenizer")
        config.model.architecture = {
            "model_type": "llama", "vocab_size": settings.vocab_size, "hidden_size": settings.hidden,
            "intermediate_size": 4 * settings.hidden, "num_hidden_layers": settings.layers,
            "num_attention_heads": settings.heads, "num_key_value_heads": settings.heads,
            "max_position_embeddings": 512, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
        }
        config.lora.enabled = False  # from scratch: every weight trains
    else:
        config.model.name_or_path = str(base_dir)
        config.lora.rank, config.lora.alpha = settings.lora_rank, settings.lora_alpha
        config.lora.target_modules = list(LORA_TARGETS[settings.lora_targets])
    config.rem.rank, config.rem.alpha = settings.rem_rank, settings.rem_alpha
    config.method = MethodConfig(name=method)
    config.method.num_thought_tokens = settings.num_thought_tokens
    config.method.separator = settings.separator
    config.method.distill_weight = settings.distill_weight
    config.method.distill_grad = settings.distill_grad
    config.method.distill_start, config.method.distill_ramp = settings.distill_start, settings.distill_ramp
    config.data.train_path = str(data_dir / "train.txt")
    config.data.omit_last_step = settings.omit_last_step
    config.data.max_length = 512
    t = config.training
    t.output_dir, t.max_steps, t.batch_size, t.lr = str(run_dir), steps, settings.batch_size, settings.lr
    save = settings.save_every if 0 < settings.save_every < steps else steps
    t.weight_decay, t.seed, t.save_steps, t.logging_steps = 0.0, settings.seed, save, max(1, min(50, steps))
    t.warmup_ratio = settings.warmup_ratio
    return config.validate("demo")


def base_spec(settings: DemoSettings):
    """The general arithmetic base of these settings (model/base_lm.py); the same for every seed."""
    from dartlm.model.base_lm import BaseModelSpec

    # 200k lines for 3,000 steps of 32 (about 0.9 passes over it); short runs (smoke tests) get a smaller corpus.
    lines = min(200_000, max(2_000, 3 * settings.base_steps * settings.batch_size))
    return BaseModelSpec(layers=settings.layers, hidden=settings.hidden, heads=settings.heads,
                         vocab_size=settings.vocab_size, lines=lines, steps=settings.base_steps,
                         batch_size=settings.batch_size, seed=settings.base_seed)


def shared_base(settings: DemoSettings, log=print) -> Path | None:
    """The cached general arithmetic base (built first if missing), or None when the settings use none."""
    from dartlm.model.base_lm import ensure_base
    from dartlm.model.loading import resolve_model_source

    if sum(map(bool, (settings.base_steps, settings.pretrain_steps, settings.base_model))) > 1:
        raise ValueError("base_steps (a general arithmetic base), base_model (a pretrained model) and pretrain_steps "
                         "(a base trained on the task's text) exclude each other")
    if settings.base_model:
        return Path(resolve_model_source(settings.base_model))  # an alias is converted once, here
    return ensure_base(base_spec(settings), log=log) if settings.base_steps else None


def pretrain_base(settings: DemoSettings, data_dir: Path, out_dir: Path, log) -> Path:
    """The shared base model: a from-scratch LM trained on the training problems' text (CoT included)."""
    run_dir, base_dir = out_dir / "runs" / "base", out_dir / "models" / "base"
    log(f"\n== base model: {settings.layers} layers, hidden {settings.hidden}, trained from scratch for "
        f"{settings.pretrain_steps} steps of {settings.batch_size} ==")
    config = method_config(settings, "cot", data_dir, run_dir, None, settings.pretrain_steps)
    config.data.omit_last_step = False  # the base reads the problems whole
    train(config, run_dir, overwrite=True)
    export_run(run_dir, base_dir, force=True, log=log)
    return base_dir
