"""llama.cpp: an exported model as a GGUF file (llama.cpp's own converter), decoded by dartlm's greedy loop.

`export_gguf` runs llama.cpp's `convert_hf_to_gguf.py` on the plain model that `dartlm export` wrote (DART's merged
weights are the base architecture, so the converter sees an ordinary checkpoint), then, for the k-quants the
converter cannot write itself, llama.cpp's quantiser through llama-cpp-python. Before anything is written the file
is run in llama.cpp on the probe prompts (the prompt, then two more tokens) against PyTorch: an f32 file must give
PyTorch's logits within fp32 rounding (CHECK_TOLERANCE); for the other types the difference is recorded, and what it
costs in accuracy is for `dartlm eval --engine llamacpp` to say.

The converter is not a Python package: it ships with llama.cpp's sources. `--converter` (or $DARTLM_LLAMA_CPP)
names a llama.cpp checkout or its `convert_hf_to_gguf.py`; llama-cpp-python's source archive holds the one matching
its library (`pip download --no-deps --no-binary :all: llama-cpp-python==<version>`, then `vendor/llama.cpp`).

Models whose answer comes from token prompts decode here: No-CoT, CoT, PauseFT, DART, iCoT; one sequence at a time
(llama-cpp-python's context holds one sequence).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dartlm import storage
from dartlm.engines import (CONVERTER_ENV, GGUF_CONVERTED, GGUF_OUTTYPES, GGUF_QUANTIZED, engine_folder,
                            token_prompted_spec)
from dartlm.model.export import ExportError, model_fingerprint
from dartlm.thinking.decoding import Step

logger = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
ENGINE_FILE = "dartlm_llamacpp.json"  # how the file was made, and what it was checked against
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
# Max |logit difference| over max |logit|, llama.cpp f32 against PyTorch fp32. llama.cpp keeps its KV cache in f16
# by default (as deployed), a relative rounding of 4.9e-4 per key and value: SmolLM2-135M's f32 file differs by 5.5e-4.
CHECK_TOLERANCE = 2e-3


def find_converter(converter: str | os.PathLike | None = None) -> Path:
    """llama.cpp's convert_hf_to_gguf.py: the given path (the script or its folder), else $DARTLM_LLAMA_CPP."""
    given = converter or os.environ.get(CONVERTER_ENV)
    if not given:
        raise ExportError(f"llama.cpp's converter is needed: pass --converter (a llama.cpp checkout, or its "
                          f"{CONVERTER_SCRIPT}) or set ${CONVERTER_ENV}. llama-cpp-python's source archive holds the "
                          "one matching its library: pip download --no-deps --no-binary :all: "
                          "llama-cpp-python==0.3.36, unpack it, and use its vendor/llama.cpp folder")
    path = Path(given)
    script = path / CONVERTER_SCRIPT if path.is_dir() else path
    if not script.is_file():
        raise ExportError(f"{given}: no {CONVERTER_SCRIPT} there (expected a llama.cpp checkout or the script)")
    return script


# llama.cpp's AMX kernels (a native build on a CPU that has AMX) crashed the process with a segmentation fault on
# q8_0 and q4_K_M files on a virtual Intel Xeon (llama-cpp-python 0.3.36), f32 files not; a build without them works.
AMX_REBUILD = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON '
               '-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_INT8=OFF" pip install --force-reinstall '
               '--no-deps --no-cache-dir llama-cpp-python==0.3.36')


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ExportError("llama-cpp-python is not installed: pip install -e \".[llamacpp]\" (it builds llama.cpp "
                          "from source)") from None
    info = llama_cpp.llama_print_system_info()
    if "AMX_INT8 = 1" in (info.decode(errors="replace") if isinstance(info, bytes) else str(info)):
        logger.warning("this llama.cpp build runs AMX kernels, which crashed with a segmentation fault on quantised "
                       "files on some machines; if that happens here, rebuild it without them: %s", AMX_REBUILD)
    return llama_cpp


def export_gguf(model_dir: Path, out_dir: Path, *, outtype: str = "f16", converter: str | os.PathLike | None = None,
                force: bool = False, threads: int | None = None, log=print) -> dict:
    """Write out_dir: model.gguf, the tokenizer, the prompt spec and a manifest; returns the check's figures."""
    if outtype not in GGUF_OUTTYPES:
        raise ExportError(f"--outtype must be one of {', '.join(GGUF_OUTTYPES)}, got {outtype!r}")
    from dartlm.exports.run import PROBE_QUESTIONS
    from dartlm.generate import load_exported, prompt_ids

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    source = model_fingerprint(model_dir)
    spec = token_prompted_spec(model_dir, "llama.cpp")
    script = find_converter(converter)
    llama_cpp = _import_llama_cpp()
    with engine_folder(model_dir, out_dir, force=force, engine="llama.cpp", what="GGUF folder") as staged:
        converted = staged / (GGUF_FILE if outtype in GGUF_CONVERTED else "model-f32.gguf")
        _convert(script, model_dir, converted, outtype if outtype in GGUF_CONVERTED else "f32")
        if outtype in GGUF_QUANTIZED:
            _quantize(llama_cpp, converted, staged / GGUF_FILE, GGUF_QUANTIZED[outtype], threads)
            converted.unlink()
        model, tokenizer, _ = load_exported(model_dir)
        tokenizer.save_pretrained(staged)
        engine = LlamaCppCausalLM(staged, threads=threads)
        probe = prompt_ids(PROBE_QUESTIONS, tokenizer, spec)
        difference = _check(model, engine, probe)
        if difference != difference:  # NaN
            raise ExportError(f"{model_dir}: llama.cpp gives non-finite logits; nothing was written")
        if outtype == "f32" and not difference <= CHECK_TOLERANCE:
            raise ExportError(f"{model_dir}: llama.cpp's logits differ from PyTorch's by {difference:.3g} of their "
                              f"scale (above {CHECK_TOLERANCE:g}); nothing was written")
        del engine  # the context holds the file open
        storage.write_json(staged / ENGINE_FILE, {
            "engine": "llama.cpp", "outtype": outtype, "llama_cpp_python": llama_cpp.__version__,
            "converter": str(script), "source": str(model_dir), "source_fingerprint": source,
            "check_difference": difference, "gguf_bytes": (staged / GGUF_FILE).stat().st_size})
    log(f"GGUF {outtype}: max |logit difference| against PyTorch {difference:.3g} of the logits' scale (probe prompts "
        "and two more tokens)")
    return {"outtype": outtype, "difference": difference}


def _convert(script: Path, model_dir: Path, out_file: Path, outtype: str) -> None:
    command = [sys.executable, str(script), str(model_dir), "--outfile", str(out_file), "--outtype", outtype]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ExportError(f"{model_dir}: llama.cpp's converter failed (exit {done.returncode}):\n{tail}")


def _quantize(llama_cpp, source: Path, target: Path, ftype: int, threads: int | None) -> None:
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or 0
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if failed or not target.is_file():
        raise ExportError(f"{source}: llama.cpp's quantiser failed (code {failed})")


@torch.no_grad()
def _check(model, engine: "LlamaCppCausalLM", prompts: list[list[int]]) -> float:
    """The largest relative logit difference between PyTorch and llama.cpp over each prompt and two more tokens."""
    from dartlm.thinking.decoding import SequenceRunner

    worst = 0.0
    for prompt in prompts:
        torch_runner, llama_runner = SequenceRunner(model), engine.runner()
        ids = torch.tensor([prompt])
        for _ in range(3):
            expected = torch_runner.feed_ids(ids, torch.ones_like(ids)).logits[:, -1]
            found = llama_runner.feed_ids(ids).logits[:, -1]
            worst = max(worst, ((expected - found).abs().max() / expected.abs().max().clamp_min(1e-30)).item())
            ids = expected.argmax(-1, keepdim=True)
    return worst


@dataclass
class LlamaCppCausalLM:
    """A GGUF folder in a llama.cpp context, for dartlm's decoding loop."""

    folder: Path
    threads: int | None = None
    context: int = 1024

    def __post_init__(self):
        llama_cpp = _import_llama_cpp()
        self.llm = llama_cpp.Llama(model_path=str(Path(self.folder) / GGUF_FILE), n_ctx=self.context,
                                   n_threads=self.threads or torch.get_num_threads(),
                                   n_threads_batch=self.threads or torch.get_num_threads(), logits_all=False,
                                   verbose=False)
        self.vocab = self.llm.n_vocab()
        self.device = torch.device("cpu")

    def runner(self) -> "LlamaCppRunner":
        return LlamaCppRunner(self)


class LlamaCppRunner:
    """SequenceRunner's `feed_ids` on llama.cpp, for one sequence: left padding (masked positions) is skipped."""

    def __init__(self, engine: LlamaCppCausalLM):
        import numpy as np

        self.engine = engine
        self.engine.llm.reset()
        self.passes = 0
        self._as_array = np.ctypeslib.as_array

    def feed_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> Step:
        if input_ids.shape[0] != 1:
            raise ExportError(f"llama.cpp decodes one sequence at a time here, got a batch of {input_ids.shape[0]} "
                              "(evaluate with --batch-size 1)")
        ids = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
        llm = self.engine.llm
        if llm.n_tokens + len(ids) > llm.n_ctx():
            raise ExportError(f"llama.cpp's context holds {llm.n_ctx()} tokens; this sequence needs "
                              f"{llm.n_tokens + len(ids)}")
        llm.eval([int(i) for i in ids])
        logits = self._as_array(llm._ctx.get_logits_ith(-1), shape=(self.engine.vocab,)).copy()
        self.passes += 1
        return Step(torch.from_numpy(logits)[None, None], ())


def load_llamacpp(folder: Path, threads: int | None = None):
    """(engine, tokenizer, prompt spec) of a folder written by `dartlm gguf`."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / GGUF_FILE).is_file():
        raise ExportError(f"{folder}: no {GGUF_FILE}; make one with `dartlm gguf MODEL_DIR {folder}`")
    spec = token_prompted_spec(folder, "llama.cpp")
    return LlamaCppCausalLM(folder, threads), AutoTokenizer.from_pretrained(folder), spec


def engine_info(folder: Path) -> dict | None:
    path = Path(folder) / ENGINE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
