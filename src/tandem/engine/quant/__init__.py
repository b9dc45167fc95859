"""Quantized weights in the engine: the one in-memory layout (`weight.py`), readers from each
checkpoint format (`readers.py`), load-time quantization (`quantize.py`), the modules that hold
them (`linear.py`), their CPU kernels (`cpu.py`) and the loader's part (`loading.py`). The
formats themselves are described, torch-free, in `tandem.model.quantization`."""
