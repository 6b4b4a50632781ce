"""Inference engines other than PyTorch eager: the exported model as deployed."""

from contextlib import contextmanager

# llama.cpp's GGUF types offered by `dartlm gguf` (engines/llamacpp.py): what llama.cpp's converter writes itself,
# and the k-quant that llama.cpp's quantiser makes from f32. Here, without the engine's imports, for the CLI's parser.
GGUF_CONVERTED = ("f32", "f16", "bf16", "q8_0")
GGUF_QUANTIZED = {"q4_K_M": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M
GGUF_OUTTYPES = GGUF_CONVERTED + tuple(GGUF_QUANTIZED)
CONVERTER_ENV = "DARTLM_LLAMA_CPP"  # a llama.cpp checkout, or its convert_hf_to_gguf.py


ENGINES = ("torch", "onnxruntime", "llamacpp")  # what `dartlm eval --engine` accepts


def token_prompted_spec(folder, engine: str):
    """The prompt spec of a folder an engine is asked to serve; models that think in hidden states between steps
    (Coconut, CODI, Quiet-STaR) are refused: an engine computes steps from token ids only."""
    from dartlm.model.export import ExportError, PromptSpec
    from dartlm.thinking import thinking_for

    spec = PromptSpec.load(folder)
    if not thinking_for(spec).token_prompted:
        raise ExportError(f"{folder}: a {spec.method} model decodes with {spec.decode} thoughts, which need hidden "
                          f"states between steps; {engine} serves models prompted with tokens only (No-CoT, CoT, "
                          "PauseFT, DART, iCoT)")
    return spec


@contextmanager
def engine_folder(model_dir, out_dir, *, force: bool, engine: str, what: str):
    """A folder written for an engine from an export, all or nothing: locked, refused when not empty (unless
    force), staged under a hidden name with the export's prompt spec and configs; the caller adds the engine's
    files inside the block, and on success the manifest is written and the staged folder swapped in."""
    import shutil

    from dartlm import storage
    from dartlm.model.export import PROMPT_FILE, ExportError, write_manifest

    with storage.OutputLock(out_dir, what):
        if out_dir.exists() and any(out_dir.iterdir()) and not force:
            raise ExportError(f"{out_dir}: the output folder is not empty; pass --force to overwrite it")
        staged = storage.staging_folder(out_dir)
        try:
            for name in (PROMPT_FILE, "config.json", "generation_config.json"):
                if (model_dir / name).is_file():
                    shutil.copy2(model_dir / name, staged / name)
            yield staged
            write_manifest(staged, source=str(model_dir.resolve()), engine=engine)
            storage.replace_folder(staged, out_dir)
        finally:
            storage.remove_tree(staged)


def load_for_engine(folder, engine: str = "torch", *, device: str = "cpu", dtype=None, threads: int | None = None):
    """(model, tokenizer, prompt spec) of a folder made for `engine`: torch (`dartlm export`), onnxruntime (`dartlm
    onnx`) or llamacpp (`dartlm gguf`). The engines' models serve dartlm's greedy loop through their `runner()`."""
    if engine == "onnxruntime":
        from dartlm.engines.onnx import load_onnx

        return load_onnx(folder)
    if engine == "llamacpp":
        from dartlm.engines.llamacpp import load_llamacpp

        return load_llamacpp(folder, threads)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    from dartlm.generate import load_exported

    return load_exported(folder, device, dtype) if dtype is not None else load_exported(folder, device)
