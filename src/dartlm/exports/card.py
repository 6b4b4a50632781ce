"""The model card (README.md) of an exported folder: Hub metadata, the prompt format, a stock-transformers snippet,
the training settings and the evaluation results.

The snippet is generated from the folder's own prompt spec and token ids, and a test runs it with stock
transformers against `dartlm generate`, so the card's instructions are the ones the model was trained for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dartlm.data.layout import PromptFormat, bos_prefix, separator_ids
from dartlm.model.export import PromptSpec
from dartlm.thinking import thinking_for

CARD_FILE = "README.md"

def base_model_id(name_or_path: str) -> tuple[str | None, str]:
    """(Hub id for the metadata or None, a phrase for the text) of the model a run fine-tuned."""
    from dartlm.model.offline import SOURCE_FILE, get_alias, is_alias

    if not name_or_path:
        return None, ""
    if is_alias(name_or_path):
        alias = get_alias(name_or_path)
        return alias.hub_id, f"`{alias.hub_id}` ({alias.description})"
    folder = Path(name_or_path)
    if folder.is_dir():
        source = folder / SOURCE_FILE
        if source.is_file():
            hub_id = json.loads(source.read_text(encoding="utf-8")).get("hub_id")
            if hub_id:
                return hub_id, f"`{hub_id}` (an offline converted copy)"
        return None, f"the local model folder `{folder.name}`"
    return name_or_path, f"`{name_or_path}`"


def snippet(spec: PromptSpec, tokenizer, question: str) -> str:
    """Python that answers `question` with stock transformers from the current directory (the exported folder)."""
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    prefix = list(bos_prefix(tokenizer))
    bos = f"{prefix} + " if prefix else ""  # [bos] where the tokenizer puts one in front of a plain encoding
    lines = [
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'path = "."  # this folder',
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path).eval()",
        "",
        "def encode(text):  # each part of the prompt is tokenised on its own, as in training",
        '    return tokenizer(text, add_special_tokens=False)["input_ids"]',
        "",
        f"question = {question!r}",
    ]
    lines += thinking_for(spec).snippet(spec, bos, json.dumps(fmt.joiner + spec.separator))
    return "\n".join(lines)


def prompt_description(spec: PromptSpec, tokenizer) -> str:
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    bos = "[bos] " if bos_prefix(tokenizer) else ""
    sep = repr(fmt.joiner + spec.separator)
    sep_tokens = len(separator_ids(tokenizer, fmt))
    layout = thinking_for(spec).layout(spec, bos, sep)
    return (f"{layout}. Each part is tokenised on its own (no special tokens added), the separator is {sep_tokens} "
            f"token(s) long, and the answer ends with the eos token. The same layout is in `dartlm_prompt.json`.")


def results_table(results: list[dict[str, Any]]) -> list[str]:
    rows = ["| data | items | accuracy (strict) | accuracy (flexible) | latency, batch 1 (median) | new tokens (mean) |",
            "|---|---|---|---|---|---|"]
    for r in results:
        accuracy = r.get("accuracy", {})
        latency = r.get("latency_ms", {})
        median = f"{latency['median']:.1f} ms" if latency.get("median") is not None else "not timed"
        tokens = r.get("new_tokens", {}).get("mean")
        rows.append(f"| {r.get('benchmark', '?')}: `{Path(str(r.get('data', '?'))).name}` | {r.get('n', '?')} "
                    f"| {100 * accuracy.get('strict', float('nan')):.1f}% "
                    f"| {100 * accuracy.get('flexible', float('nan')):.1f}% | {median} "
                    f"| {tokens if tokens is not None else '?'} |")
    return rows


def settings_lines(config, terms: dict[str, float], method_lines: list[str] = ()) -> list[str]:
    """The training settings; method_lines: what the method says of its own (Method.card_lines)."""
    m, t = config.method, config.training
    lines = [f"- method `{m.name}`, C = {m.num_thought_tokens}, separator {m.separator!r}"]
    lines += method_lines
    if config.lora.enabled:
        targets = ", ".join(config.lora.target_modules) or "the attention projections"
        lines.append(f"- LoRA r = {config.lora.rank}, α = {config.lora.alpha:g} on {targets}; the base frozen")
    else:
        lines.append("- every weight trained (no LoRA)")
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    lines.append(f"- {steps} of {t.batch_size} x {t.grad_accum} examples, lr {t.lr:g} ({t.scheduler}, warm-up "
                 f"{t.warmup_ratio:g}), weight decay {t.weight_decay:g}, seed {t.seed}, {config.model.dtype}")
    lines.append(f"- training data `{Path(config.data.train_path).name}`")
    if terms:
        lines.append("- last logged losses: " + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()))
    return lines


def render_card(spec: PromptSpec, tokenizer, config, *, check=None, results: list[dict] | None = None,
                terms: dict[str, float] | None = None, question: str = "What is 3 + 4?",
                about: tuple[str, str] | None = None, method_lines: list[str] = ()) -> str:
    """The card's markdown. about: (title, description) of the method, which the method itself provides
    (Method.title, Method.description); without it, the method's name."""
    from dartlm import __version__

    hub_id, base_text = base_model_id(config.model.name_or_path)
    title, description = about or (spec.method, "")
    origin = f"Fine-tuned from {base_text}." if base_text else "Trained from scratch (random initialisation)."
    metadata: dict[str, Any] = {}
    if hub_id:
        metadata["base_model"] = hub_id
    metadata.update({"library_name": "transformers", "pipeline_tag": "text-generation",
                     "tags": ["dartlm", spec.method, "reasoning", "efficient-reasoning"]})
    if spec.method == "dart":
        metadata["tags"].append("silent-thought")
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "",
             f"# {title} model exported by dartlm {__version__}", "",
             f"{origin} {description}".strip(), "",
             "It is a plain transformers model: `AutoModelForCausalLM.from_pretrained` loads it, no dartlm needed.", "",
             "## Prompt format", "", prompt_description(spec, tokenizer), "",
             "## Answer a question with stock transformers", "", "```python", snippet(spec, tokenizer, question),
             "```", "", "Or, with dartlm installed: `dartlm generate . \"QUESTION\"`.", "",
             "## Training", ""]
    lines += settings_lines(config, terms or {}, method_lines)
    if check is not None:
        lines += ["", f"The export's merge check: the merged model's logits differ from the adapter model's by "
                      f"{check.difference:.3g} of their scale (float64), against {check.fp32_rounding:.3g} from "
                      "fp32 rounding alone."]
    lines += ["", "## Evaluation", ""]
    if results:
        lines += results_table(results)
        lines += ["", "Greedy decoding (`dartlm eval`). Strict: the answer right after the last separator must equal "
                      "the gold answer; flexible: the last number (or choice) anywhere in the output."]
    else:
        lines.append("Not evaluated at export. `dartlm eval . --benchmark gsm8k --data-path FILE` scores it, and "
                     "`dartlm export RUN OUT --results EVAL.json` puts the result here.")
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, spec: PromptSpec, tokenizer, config, **kwargs) -> Path:
    from dartlm.storage import write_text

    path = Path(folder) / CARD_FILE
    write_text(path, render_card(spec, tokenizer, config, **kwargs))
    return path
