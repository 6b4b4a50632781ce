"""ONNX Runtime: an exported model as one ONNX graph with an explicit KV cache, decoded by dartlm's own greedy loop.

`export_onnx` traces the plain model that `dartlm export` wrote (DART's merged weights are the base architecture)
as one decoding step: (input_ids, attention_mask, position_ids, past keys and values) -> (logits, present keys
and values). The same graph serves the prompt (an empty past) and every further token, so ONNX Runtime runs the
whole decode with a KV cache. Before anything is written, the graph is run in ONNX Runtime on a left-padded probe
(the prompt, then two more tokens) and must give PyTorch's logits within fp32 rounding.

Models whose answer comes from token prompts decode here: No-CoT, CoT, PauseFT, DART, iCoT. Continuous thoughts
(Coconut, CODI) and Quiet-STaR's thinking decode need hidden states between steps; they are refused.

(optimum's ONNX exporter, the usual route, requires transformers < 4.58 and cannot be installed beside this
project's transformers 5; the graph is traced with torch.onnx's TorchScript exporter instead.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dartlm import storage
from dartlm.thinking.decoding import Step, positions_from_mask
from dartlm.engines import engine_folder, token_prompted_spec
from dartlm.model.export import ExportError, model_fingerprint

ONNX_FILE = "model.onnx"
ENGINE_FILE = "dartlm_onnx.json"  # how the graph was made, and what it was checked against
CHECK_TOLERANCE = 1e-4  # max |logit difference| over max |logit|, ONNX Runtime against PyTorch, both fp32


class _Step(torch.nn.Module):
    """One forward pass with the KV cache as plain tensors: what the ONNX graph computes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _kv_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder config."""
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return layers, heads, head_dim


def _names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


QUANTIZATIONS = ("none", "int8")


def export_onnx(model_dir: Path, out_dir: Path, *, force: bool = False, opset: int = 17, quantize: str = "none",
                log=print) -> dict:
    """Write out_dir: model.onnx, the tokenizer, the prompt spec and a manifest; returns the check's figures.

    quantize "int8": ONNX Runtime's dynamic quantisation (int8 weights of the matrix products, activations quantised
    on the fly) of the checked fp32 graph. Its logits are not PyTorch's; how far they are is recorded, and what it
    costs in accuracy is for `dartlm eval` to say.
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    from dartlm.generate import left_padded, load_exported, prompt_ids
    from dartlm.exports.run import PROBE_QUESTIONS

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    source = model_fingerprint(model_dir)
    spec = token_prompted_spec(model_dir, "ONNX Runtime")
    with engine_folder(model_dir, out_dir, force=force, engine="onnxruntime", what="ONNX folder") as staged:
        model, tokenizer, _ = load_exported(model_dir)
        model.config.use_cache = True
        layers, heads, head_dim = _kv_shape(model.config)
        step = _Step(model).eval()
        probe = left_padded(prompt_ids(PROBE_QUESTIONS, tokenizer, spec), tokenizer.pad_token_id)
        past_names, present_names = _names(layers, "past"), _names(layers, "present")
        batch = probe["input_ids"].shape[0]
        empty = [torch.zeros(batch, heads, 1, head_dim) for _ in past_names]  # traced with a 1-long past
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.long), probe["attention_mask"]], dim=1)
        positions = positions_from_mask(mask)[:, 1:]
        dynamic = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
                   "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch", 1: "new"},
                   **{name: {0: "batch", 2: "past"} for name in past_names},
                   **{name: {0: "batch", 2: "total"} for name in present_names}}
        with torch.no_grad():
            torch.onnx.export(step, (probe["input_ids"], mask, positions, *empty), str(staged / ONNX_FILE),
                              input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                              output_names=["logits", *present_names], dynamic_axes=dynamic, opset_version=opset,
                              dynamo=False)
        tokenizer.save_pretrained(staged)
        difference = _check(step, OnnxCausalLM(staged), probe, tokenizer)
        if not difference <= CHECK_TOLERANCE:
            raise ExportError(f"{model_dir}: ONNX Runtime's logits differ from PyTorch's by {difference:.3g} of "
                              f"their scale (above {CHECK_TOLERANCE:g}); nothing was written")
        quantized_difference = None
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fp32 = staged / ONNX_FILE
            int8 = staged / "model.int8.onnx"
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            int8.replace(fp32)
            quantized_difference = _check(step, OnnxCausalLM(staged), probe, tokenizer)
            if quantized_difference != quantized_difference:  # NaN
                raise ExportError(f"{model_dir}: the int8 graph gives non-finite logits; nothing was written")
        storage.write_json(staged / ENGINE_FILE, {"engine": "onnxruntime", "opset": opset, "source": str(model_dir),
                                                  "source_fingerprint": source, "check_difference": difference,
                                                  "quantization": quantize, "int8_difference": quantized_difference,
                                                  "layers": layers, "kv_heads": heads, "head_dim": head_dim})
    log(f"ONNX check: max |logit difference| {difference:.3g} of the logits' scale (prompt and two more tokens)"
        + (f"; after int8 quantisation {quantized_difference:.3g}" if quantized_difference is not None else ""))
    return {"difference": difference, "opset": opset, "int8_difference": quantized_difference}


@torch.no_grad()
def _check(step: _Step, engine: "OnnxCausalLM", probe: dict, tokenizer) -> float:
    """The largest relative logit difference between PyTorch and ONNX Runtime over the prompt and two tokens."""
    from dartlm.thinking.decoding import SequenceRunner

    torch_runner, onnx_runner = SequenceRunner(step.model), engine.runner()
    worst = 0.0
    feeds = [(probe["input_ids"], probe["attention_mask"])]
    for _ in range(3):
        ids, mask = feeds[-1]
        expected = torch_runner.feed_ids(ids, mask).logits
        found = onnx_runner.feed_ids(ids, mask).logits
        worst = max(worst, ((expected - found).abs().max() / expected.abs().max().clamp_min(1e-30)).item())
        token = expected[:, -1].argmax(-1, keepdim=True)
        feeds.append((token, torch.ones_like(token)))
    return worst


@dataclass
class OnnxCausalLM:
    """An exported ONNX folder in an ONNX Runtime session, for dartlm's decoding loop."""

    folder: Path

    def __post_init__(self):
        import onnxruntime

        info = json.loads((Path(self.folder) / ENGINE_FILE).read_text(encoding="utf-8")) \
            if (Path(self.folder) / ENGINE_FILE).is_file() else None
        options = onnxruntime.SessionOptions()
        self.session = onnxruntime.InferenceSession(str(Path(self.folder) / ONNX_FILE), options,
                                                    providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past.")]
        self.layers = len(self.past_names) // 2
        shape = inputs[self.past_names[0]].shape  # [batch, heads, past, head_dim]
        self.heads = info["kv_heads"] if info else shape[1]
        self.head_dim = info["head_dim"] if info else shape[3]
        self.device = torch.device("cpu")

    def runner(self) -> "OnnxRunner":
        return OnnxRunner(self)


class OnnxRunner:
    """SequenceRunner's `feed_ids` on ONNX Runtime: the mask grows with every chunk, positions follow it."""

    def __init__(self, engine: OnnxCausalLM):
        self.engine = engine
        self.mask: torch.Tensor | None = None
        self.past: list | None = None
        self.passes = 0

    def feed_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> Step:
        import numpy as np

        batch, width = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, width, dtype=torch.long)
        self.mask = attention_mask.long() if self.mask is None else torch.cat([self.mask, attention_mask.long()], 1)
        positions = positions_from_mask(self.mask)[:, -width:]
        if self.past is None:
            e = self.engine
            self.past = [np.zeros((batch, e.heads, 0, e.head_dim), dtype=np.float32) for _ in e.past_names]
        feeds = {"input_ids": input_ids.long().numpy(), "attention_mask": self.mask.numpy(),
                 "position_ids": positions.numpy(), **dict(zip(self.engine.past_names, self.past))}
        logits, *self.past = self.engine.session.run(None, feeds)
        self.passes += 1
        return Step(torch.from_numpy(logits), ())


def load_onnx(folder: Path):
    """(engine, tokenizer, prompt spec) of a folder written by `dartlm onnx`."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / ONNX_FILE).is_file():
        raise ExportError(f"{folder}: no {ONNX_FILE}; make one with `dartlm onnx MODEL_DIR {folder}`")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError("ONNX Runtime is not installed: pip install -e \".[onnx]\"") from None
    spec = token_prompted_spec(folder, "ONNX Runtime")
    return OnnxCausalLM(folder), AutoTokenizer.from_pretrained(folder), spec
