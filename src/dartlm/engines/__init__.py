"""Inference engines other than PyTorch eager: the exported model as deployed."""

# llama.cpp's GGUF types offered by `dartlm gguf` (engines/llamacpp.py): what llama.cpp's converter writes itself,
# and the k-quant that llama.cpp's quantiser makes from f32. Here, without the engine's imports, for the CLI's parser.
GGUF_CONVERTED = ("f32", "f16", "bf16", "q8_0")
GGUF_QUANTIZED = {"q4_K_M": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M
GGUF_OUTTYPES = GGUF_CONVERTED + tuple(GGUF_QUANTIZED)
CONVERTER_ENV = "DARTLM_LLAMA_CPP"  # a llama.cpp checkout, or its convert_hf_to_gguf.py
