"""What the thought positions carry: the hidden state of every layer at every thought position and at z_N, read
two ways, for an exported model of any method.

- Logit lens: each state decoded through the final norm and the LM head (the last layer's state is already normed
  in transformers' hidden_states); reported per layer x position: the gold answer's first token's mean probability,
  its mean rank, and how often it is the top token.
- Linear probes: a cross-validated ridge classifier (scikit-learn) per layer x position x target, fitted on one set
  of items and scored on held-out items; targets are the chain's intermediate results (`<<a+b=c>>` gives c) and the
  final answer. Each is reported with the majority-class baseline and a control probe fitted on shuffled labels.

Positions follow each method's own inference prompt: DART/PauseFT the C thought tokens then z_N (the separator's last
token); Coconut/CODI the C continuous thoughts then z_N; No-CoT/iCoT z_N alone; CoT z_N after the model's own chain
(greedy, re-encoded as training encodes a chain).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from dartlm.config import ConfigError
from dartlm.data.example import Example
from dartlm.data.layout import PromptFormat, segment_example, separator_ids
from dartlm.eval.benchmarks import BenchmarkItem, load_benchmark
from dartlm.generate import generate, left_padded
from dartlm.model.export import PromptSpec
from dartlm.thinking import thinking_for
from dartlm.thinking.decoding import SequenceRunner

_RESULT = re.compile(r"<<[^<>=]*=\s*([^<>]+?)\s*>>")


def intermediate_results(steps: Sequence[str]) -> tuple[str, ...]:
    """The result of each `<<expression=result>>` annotation in the steps, in order (commas dropped)."""
    return tuple(m.group(1).replace(",", "") for step in steps for m in _RESULT.finditer(step))


@dataclass
class ProbeData:
    """Probe targets of a set of items: step_k (the k-th intermediate result) and answer; None where an item has
    no value for a target (it is skipped for that target and counted)."""

    items: list[BenchmarkItem]
    targets: dict[str, list[str | None]]

    @classmethod
    def from_items(cls, items: list[BenchmarkItem]) -> "ProbeData":
        results = [intermediate_results(i.reference_steps) for i in items]
        depth = max((len(r) for r in results), default=0)
        targets = {f"step_{k + 1}": [r[k] if k < len(r) else None for r in results] for k in range(depth)}
        targets["answer"] = [i.target for i in items]
        return cls(items, targets)

    def skipped(self) -> dict[str, int]:
        return {name: sum(v is None for v in values) for name, values in self.targets.items()}


def first_content_token(ids: Sequence[int], tokenizer) -> int:
    """The answer's first token that is not whitespace alone: where a tokenizer gives the joiner space a token of
    its own, that token would be every answer's "first token" and tell nothing."""
    for token in ids:
        if tokenizer.decode([token]).strip():
            return token
    return ids[0]


def final_norm(model):
    base = model.base_model if hasattr(model, "base_model") else model
    for name in ("norm", "ln_f", "final_layer_norm"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    raise ValueError(f"{type(model).__name__}: no final norm found (looked for norm, ln_f, final_layer_norm)")


@dataclass
class States:
    """hidden: (items, layers + 1, positions, n) in float32; valid: items whose states were collected."""

    positions: list[str]
    hidden: torch.Tensor
    valid: list[bool]
    gold_first_token: list[int]
    skipped: dict[str, int] = field(default_factory=dict)


def _stack(step_hidden: tuple[torch.Tensor, ...], index: Sequence[int]) -> torch.Tensor:
    """(B, layers + 1, len(index), n) from a Step's per-layer (B, k, n) states."""
    return torch.stack([h[:, list(index)] for h in step_hidden], dim=1).float()


@torch.no_grad()
def collect_states(model, tokenizer, spec: PromptSpec, questions: Sequence[str], answers: Sequence[str], *,
                   batch_size: int = 16) -> States:
    """Every layer's state at every thought position and at z_N, for each question, by the method's own prompt."""
    fmt = PromptFormat(separator=spec.separator, joiner=spec.joiner)
    thinking = thinking_for(spec)
    gold = [first_content_token(segment_example(Example("", (), a), tokenizer, fmt).answer, tokenizer)
            for a in answers]
    labels = [f"thought {k + 1}" for k in range(thinking.probed_thoughts(spec))] + ["z_N"]
    separator = len(separator_ids(tokenizer, fmt))

    def segment(question: str, reasoning: str):
        return segment_example(Example(question, (reasoning,) if reasoning else (), ""), tokenizer, fmt)

    prompts, kept, skipped = thinking.probe_prompts(
        tokenizer, spec, questions, segment, lambda qs: generate(model, tokenizer, spec, qs, batch_size=batch_size))
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = left_padded(prompts[start : start + batch_size], tokenizer.pad_token_id)
        runner = SequenceRunner(model)
        step = runner.feed_ids(batch["input_ids"], batch["attention_mask"], hidden_states=True)
        chunks.append(thinking.probe_states(runner, step, tokenizer, spec, batch["input_ids"].shape[1], separator,
                                           _stack))
    return States(labels, torch.cat(chunks), kept, gold, skipped)


@torch.no_grad()
def logit_lens(model, states: States, tokenizer, top: int = 3) -> dict:
    """Per layer x position: the gold first token's mean probability and rank, top-1 rate, and the commonest top
    tokens."""
    head, norm = model.get_output_embeddings(), final_norm(model)
    hidden = states.hidden[torch.tensor(states.valid)]
    gold = torch.tensor([g for g, ok in zip(states.gold_first_token, states.valid) if ok])
    layers, positions = hidden.shape[1], hidden.shape[2]
    prob = torch.zeros(layers, positions)
    rank = torch.zeros(layers, positions)
    top1 = torch.zeros(layers, positions)
    tops: list[list[list[str]]] = []
    dtype = head.weight.dtype
    for layer in range(layers):
        h = hidden[:, layer].to(dtype)  # (N, P, n)
        logits = head(h if layer == layers - 1 else norm(h)).float()  # the last state is normed already
        p = logits.softmax(-1)
        gold_logit = logits.gather(-1, gold[:, None, None].expand(-1, positions, 1))
        prob[layer] = p.gather(-1, gold[:, None, None].expand(-1, positions, 1)).squeeze(-1).mean(0)
        rank[layer] = (logits > gold_logit).sum(-1).float().mean(0)
        best = logits.argmax(-1)  # (N, P)
        top1[layer] = (best == gold[:, None]).float().mean(0)
        row = []
        for position in range(positions):
            ids, counts = best[:, position].unique(return_counts=True)
            order = counts.argsort(descending=True)[:top]
            row.append([tokenizer.decode([int(ids[i])]) for i in order])
        tops.append(row)
    return {"gold_probability": prob.tolist(), "gold_rank": rank.tolist(), "gold_top1": top1.tolist(),
            "common_top_tokens": tops}


def fit_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy of a cross-validated ridge classifier, of a control fitted on shuffled labels, and the
    majority class of the fitting labels."""
    import numpy as np
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    majority = max(set(train_y.tolist()), key=train_y.tolist().count)
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    alphas = np.logspace(-1, 4, 6)
    if len(set(train_y.tolist())) < 2:
        return {"accuracy": float((test_y == majority).mean()), "control": float((test_y == majority).mean()),
                "majority": float((test_y == majority).mean())}
    probe = RidgeClassifierCV(alphas=alphas).fit(train_x, train_y)
    shuffled = np.random.default_rng(seed).permutation(train_y)
    control = RidgeClassifierCV(alphas=alphas).fit(train_x, shuffled)
    return {"accuracy": float((probe.predict(test_x) == test_y).mean()),
            "control": float((control.predict(test_x) == test_y).mean()),
            "majority": float((test_y == majority).mean())}


def probe_states(fit: States, fit_data: ProbeData, held: States, held_data: ProbeData) -> dict[str, dict]:
    """Per target: accuracy, control and majority as (layers + 1) x positions grids, and how many items were used."""
    out = {}
    layers, positions = fit.hidden.shape[1], fit.hidden.shape[2]
    for name in held_data.targets:
        fit_rows = [i for i, (v, ok) in enumerate(zip(fit_data.targets.get(name, []), fit.valid)) if v is not None and ok]
        held_rows = [i for i, (v, ok) in enumerate(zip(held_data.targets[name], held.valid)) if v is not None and ok]
        if len(fit_rows) < 4 or not held_rows:
            continue
        grids = {k: [[0.0] * positions for _ in range(layers)] for k in ("accuracy", "control", "majority")}
        for layer in range(layers):
            for position in range(positions):
                scores = fit_probe(fit.hidden[fit_rows, layer, position].numpy(),
                                   [fit_data.targets[name][i] for i in fit_rows],
                                   held.hidden[held_rows, layer, position].numpy(),
                                   [held_data.targets[name][i] for i in held_rows])
                for key, value in scores.items():
                    grids[key][layer][position] = value
        out[name] = {**grids, "fit_items": len(fit_rows), "held_out_items": len(held_rows)}
    return out


def run_probe(model_dir: Path, data_path: Path, out_dir: Path, *, fit_path: Path | None = None,
              benchmark: str = "gsm8k", limit: int | None = None, fit_limit: int | None = None,
              batch_size: int = 16, seed: int = 0, layers: Sequence[int] | None = None, log=print) -> dict:
    """Collect, read and write probe.json, probe.png and probe.md for one exported model."""
    from dartlm.generate import load_exported

    model, tokenizer, spec = load_exported(model_dir)
    held_items = load_benchmark(benchmark, data_path, limit=limit)
    if fit_path is not None:
        fit_items = load_benchmark(benchmark, fit_path, limit=fit_limit)
    else:  # one file: fit on a random 70%, score on the rest
        order = list(range(len(held_items)))
        random.Random(seed).shuffle(order)
        cut = int(0.7 * len(order))
        fit_items, held_items = [held_items[i] for i in order[:cut]], [held_items[i] for i in order[cut:]]
    fit_data, held_data = ProbeData.from_items(fit_items), ProbeData.from_items(held_items)
    log(f"{spec.method}: fitting on {len(fit_items)} items, scoring on {len(held_items)}")
    fit = collect_states(model, tokenizer, spec, [i.question for i in fit_items], [i.target for i in fit_items],
                         batch_size=batch_size)
    held = collect_states(model, tokenizer, spec, [i.question for i in held_items], [i.target for i in held_items],
                          batch_size=batch_size)
    all_layers = list(range(held.hidden.shape[1]))
    if layers is not None:
        unknown = sorted(set(layers) - set(all_layers))
        if unknown:
            raise ConfigError(f"--layers {unknown}: the model has layers 0 (embeddings) to {all_layers[-1]}")
        last = all_layers[-1]
        layers = sorted(set(layers) | {last})  # the last layer is kept: the lens needs to know it is normed
        fit.hidden, held.hidden = fit.hidden[:, layers], held.hidden[:, layers]
    else:
        layers = all_layers
    result = {
        "model": str(model_dir), "method": spec.method, "positions": held.positions,
        "layers": layers, "fit_data": str(fit_path or data_path), "held_out_data": str(data_path),
        "fit_items": len(fit_items), "held_out_items": len(held_items),
        "skipped_without_target": {"fit": fit_data.skipped(), "held_out": held_data.skipped()},
        "skipped_states": {"fit": fit.skipped, "held_out": held.skipped},
        "logit_lens": logit_lens(model, held, tokenizer),
        "probes": probe_states(fit, fit_data, held, held_data),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_probe(result, out_dir / "probe.png")
    (out_dir / "probe.md").write_text(summary_markdown(result), encoding="utf-8")
    return result


def plot_probe(result: dict, path: Path) -> None:
    """One heatmap per reading (layer x position), each cell annotated with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("logit lens\nP(gold first token)", result["logit_lens"]["gold_probability"])]
    panels += [(f"probe: {name}\ncontrol {max(map(max, p['control'])):.2f}, majority {p['majority'][0][0]:.2f}",
                p["accuracy"]) for name, p in result["probes"].items()]
    positions = [p.replace("thought ", "t") for p in result["positions"]]
    width = max(2.6, 0.42 * len(positions) + 0.8)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels) + 1, 3.4), squeeze=False)
    for index, (ax, (title, grid)) in enumerate(zip(axes[0], panels)):
        image = ax.imshow(grid, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis")
        for layer, row in enumerate(grid):
            for position, value in enumerate(row):
                ax.text(position, layer, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center",
                        fontsize=5.5, color="white" if value < 0.6 else "black")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(positions)))
        ax.set_xticklabels(positions, fontsize=7)
        ax.set_yticks(range(len(result["layers"])))
        ax.set_yticklabels(result["layers"], fontsize=7)
        ax.set_xlabel("position", fontsize=8)
        if index == 0:
            ax.set_ylabel("layer (0 = embeddings)", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"{result['method']}: {Path(result['model']).name} (held-out accuracy; 1 = every item)", fontsize=9, y=1.06)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def summary_markdown(result: dict) -> str:
    z = result["positions"].index("z_N")
    last = len(result["layers"]) - 1
    lines = [f"# Probe of `{result['model']}` ({result['method']})", "",
             f"Fitted on {result['fit_items']} items, scored on {result['held_out_items']}; positions "
             f"{', '.join(result['positions'])}; layers {result['layers']} (0 = embeddings).", "",
             "| target | best probe accuracy (layer, position) | at z_N, last layer | control (max) | majority |",
             "|---|---|---|---|---|"]
    for name, p in result["probes"].items():
        grid = p["accuracy"]
        layer, position = max(((l, q) for l in range(len(grid)) for q in range(len(grid[0]))),
                              key=lambda lq: grid[lq[0]][lq[1]])
        lines.append(f"| {name} | {grid[layer][position]:.2f} ({result['layers'][layer]}, {result['positions'][position]}) "
                     f"| {grid[last][z]:.2f} | {max(map(max, p['control'])):.2f} | {p['majority'][0][0]:.2f} |")
    lens = result["logit_lens"]
    lines += ["", f"Logit lens at z_N, last layer: P(gold first token) {lens['gold_probability'][last][z]:.2f}, "
                  f"top-1 {lens['gold_top1'][last][z]:.2f}, mean rank {lens['gold_rank'][last][z]:.1f}."]
    return "\n".join(lines) + "\n"
