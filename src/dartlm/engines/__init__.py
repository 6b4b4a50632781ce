"""Inference engines other than PyTorch eager: the exported model as deployed."""

# llama.cpp's GGUF types offered by `dartlm gguf` (engines/llamacpp.py): what llama.cpp's converter writes itself,
# and the k-quant that llama.cpp's quantiser makes from f32. Here, without the engine's imports, for the CLI's parser.
GGUF_CONVERTED = ("f32", "f16", "bf16", "q8_0")
GGUF_QUANTIZED = {"q4_K_M": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M
GGUF_OUTTYPES = GGUF_CONVERTED + tuple(GGUF_QUANTIZED)
CONVERTER_ENV = "DARTLM_LLAMA_CPP"  # a llama.cpp checkout, or its convert_hf_to_gguf.py


def load_for_engine(folder, engine: str = "torch", *, device: str = "cpu", dtype=None, threads: int | None = None):
    """(model, tokenizer, prompt spec) of a folder made for `engine`: torch (`dartlm export`), onnxruntime (`dartlm
    onnx`) or llamacpp (`dartlm gguf`). The engines' models serve dartlm's greedy loop through their `runner()`."""
    if engine == "onnxruntime":
        from dartlm.engines.onnx import load_onnx

        return load_onnx(folder)
    if engine == "llamacpp":
        from dartlm.engines.llamacpp import load_llamacpp

        return load_llamacpp(folder, threads)
    if engine != "torch":
        raise ValueError(f"unknown engine {engine!r}; known: torch, onnxruntime, llamacpp")
    from dartlm.generate import load_exported

    return load_exported(folder, device, dtype) if dtype is not None else load_exported(folder, device)
