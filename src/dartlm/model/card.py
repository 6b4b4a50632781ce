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
from dartlm.model.export import PROJECTION_FILE, QUIET_HEAD_FILE, PromptSpec

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
    separator = json.dumps(fmt.joiner + spec.separator)
    if spec.decode == "answer":
        thoughts = ""
        if spec.num_thought_tokens:
            lines.append(f"thought = tokenizer.convert_tokens_to_ids({spec.thought_token!r})")
            thoughts = f" + [thought] * {spec.num_thought_tokens}"
        lines += [
            f"ids = {bos}encode(question){thoughts} + encode({separator})",
            "output = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,",
            "                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)",
            "print(tokenizer.decode(output[0, len(ids):], skip_special_tokens=True).strip())",
        ]
    elif spec.decode == "cot":
        lines += [
            f"ids = {bos}encode(question)",
            "output = model.generate(torch.tensor([ids]), max_new_tokens=256, do_sample=False,",
            "                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)",
            "text = tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)",
            f"reasoning, _, answer = text.partition({json.dumps(spec.separator)})",
            "print(answer.strip())",
        ]
    elif spec.decode == "latent":
        start, end = spec.latent_markers
        lines += [
            f"ids = {bos}encode(question) + [tokenizer.convert_tokens_to_ids({start!r})]",
            "embed = model.get_input_embeddings()",
        ]
        if spec.projection:
            lines += [
                "from safetensors.torch import load_file",
                "n = model.config.hidden_size",
                "projection = torch.nn.Sequential(torch.nn.Linear(n, n), torch.nn.GELU(), torch.nn.Linear(n, n),",
                "                                 torch.nn.LayerNorm(n))",
                f"projection.load_state_dict(load_file({PROJECTION_FILE!r}))",
            ]
        feed = "projection(last)" if spec.projection else "last"
        lines += [
            "with torch.no_grad():",
            "    inputs = embed(torch.tensor([ids]))",
            f"    for _ in range({spec.num_thought_tokens}):  # continuous thoughts: the last hidden state fed back",
            "        last = model(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][:, -1:]",
            f"        inputs = torch.cat([inputs, {feed}.to(inputs.dtype)], dim=1)",
            f"    after = [tokenizer.convert_tokens_to_ids({end!r})] + encode({separator})",
            "    inputs = torch.cat([inputs, embed(torch.tensor([after]))], dim=1)",
            "    answer = []",
            "    for _ in range(32):  # greedy",
            "        token = model(inputs_embeds=inputs).logits[0, -1].argmax().item()",
            "        if token == tokenizer.eos_token_id:",
            "            break",
            "        answer.append(token)",
            "        inputs = torch.cat([inputs, embed(torch.tensor([[token]]))], dim=1)",
            "print(tokenizer.decode(answer, skip_special_tokens=True).strip())",
        ]
    elif spec.decode == "quiet":
        lines += [
            "from safetensors.torch import load_file",
            f"head = load_file({QUIET_HEAD_FILE!r})  # the mixing head and the start/end-of-thought embeddings",
            "n = model.config.hidden_size",
            "mixer = torch.nn.Sequential(torch.nn.Linear(2 * n, n), torch.nn.ReLU(), torch.nn.Linear(n, n),",
            "                            torch.nn.ReLU(), torch.nn.Linear(n, 1))",
            'mixer.load_state_dict({k[len("mixer."):]: v for k, v in head.items() if k.startswith("mixer.")})',
            'start, end = (head["meta"] * head["embedding_scale"])[:, None, None]  # (1, 1, n) each',
            "embed = model.get_input_embeddings()",
            f"ids = {bos}encode(question) + encode({separator})",
            "with torch.no_grad():",
            "    inputs = embed(torch.tensor([ids]))",
            "    answer = []",
            "    for _ in range(32):  # greedy; a thought before every answer token",
            "        h_base = model(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][:, -1]",
            "        thought = torch.cat([inputs, start], dim=1)",
            f"        for _ in range({spec.quiet_n_ahead - 2}):  # the thought's tokens, greedy",
            "            token = model(inputs_embeds=thought).logits[:, -1].argmax(-1)",
            "            thought = torch.cat([thought, embed(token[:, None])], dim=1)",
            "        thought = torch.cat([thought, end], dim=1)",
            "        h_post = model(inputs_embeds=thought, output_hidden_states=True).hidden_states[-1][:, -1]",
            "        w = mixer(torch.cat([h_base, h_post], dim=-1))",
            "        token = model.get_output_embeddings()((1 - w) * h_base + w * h_post)[0].argmax().item()",
            "        if token == tokenizer.eos_token_id:",
            "            break",
            "        answer.append(token)  # the thought is dropped; the token is kept",
            "        inputs = torch.cat([inputs, embed(torch.tensor([[token]]))], dim=1)",
            "print(tokenizer.decode(answer, skip_special_tokens=True).strip())",
        ]
    else:
        raise ValueError(f"unknown decode mode {spec.decode!r}")
    return "\n".join(lines)


def prompt_description(spec: PromptSpec, tokenizer) -> str:
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    bos = "[bos] " if bos_prefix(tokenizer) else ""
    sep = repr(fmt.joiner + spec.separator)
    sep_tokens = len(separator_ids(tokenizer, fmt))
    if spec.decode == "answer" and spec.num_thought_tokens:
        layout = f"{bos}question + `{spec.thought_token}` x {spec.num_thought_tokens} + {sep}, then the answer"
    elif spec.decode == "answer":
        layout = f"{bos}question + {sep}, then the answer"
    elif spec.decode == "cot":
        layout = f"{bos}question, then the model writes its reasoning, {sep} and the answer"
    elif spec.decode == "quiet":
        layout = (f"{bos}question + {sep}, then the answer, thinking before each answer token: a start-of-thought "
                  f"embedding, {spec.quiet_n_ahead - 2} greedy thought tokens and an end-of-thought embedding, whose "
                  f"state the mixing head of `{QUIET_HEAD_FILE}` mixes with the thought-free one (the thought is "
                  "then dropped)")
    else:
        start, end = spec.latent_markers
        layout = (f"{bos}question + `{start}`, {spec.num_thought_tokens} continuous thoughts, `{end}` + {sep}, "
                  "then the answer")
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


def settings_lines(config, terms: dict[str, float]) -> list[str]:
    m, t = config.method, config.training
    lines = [f"- method `{m.name}`, C = {m.num_thought_tokens}, separator {m.separator!r}"]
    if m.name in ("dart", "codi"):
        lines.append(f"- distillation weight λ = {m.distill_weight:g} at `{m.distill_at}`, gradient into "
                     f"`{m.distill_grad}`, start {m.distill_start:g}, ramp {m.distill_ramp:g}")
    if m.name in ("quiet-star", "fast-quiet-star"):
        shape = (f"stages (n_ahead, n_talk) {', '.join(map(str, map(tuple, m.fqs_stages)))}"
                 if m.name == "fast-quiet-star" else f"thoughts of {m.quiet_n_ahead} (start and end included), "
                 f"{m.quiet_n_talk} talk tokens")
        lines.append(f"- {shape}, {m.quiet_passes} passes, policy weight {m.quiet_policy_weight:g}, loss on "
                     f"`{m.quiet_loss_on}`")
    if m.name == "fqs-ntp":
        lines.append(f"- teacher `{Path(m.ntp_teacher).name}`, policy weight {m.ntp_policy_weight:g}, NLL weight "
                     f"{m.ntp_nll_weight:g}")
    if config.lora.enabled:
        targets = ", ".join(config.lora.target_modules) or "the attention projections"
        lines.append(f"- LoRA r = {config.lora.rank}, α = {config.lora.alpha:g} on {targets}; the base frozen")
    else:
        lines.append("- every weight trained (no LoRA)")
    if m.name == "dart" and config.rem.enabled:
        lines.append(f"- REM d = {config.rem.rank}, α = {config.rem.alpha:g}, placement `{config.rem.placement}`")
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    lines.append(f"- {steps} of {t.batch_size} x {t.grad_accum} examples, lr {t.lr:g} ({t.scheduler}, warm-up "
                 f"{t.warmup_ratio:g}), weight decay {t.weight_decay:g}, seed {t.seed}, {config.model.dtype}")
    lines.append(f"- training data `{Path(config.data.train_path).name}`")
    if terms:
        lines.append("- last logged losses: " + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()))
    return lines


def render_card(spec: PromptSpec, tokenizer, config, *, check=None, results: list[dict] | None = None,
                terms: dict[str, float] | None = None, question: str = "What is 3 + 4?",
                about: tuple[str, str] | None = None) -> str:
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
    lines += settings_lines(config, terms or {})
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
