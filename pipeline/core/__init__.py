"""Foundations every room stands on: the exception hierarchy (`errors`), signals (`interrupts`),
the one door to TensorFlow (`tfenv`), configuration dataclasses (`config`), bounded reading of
user files (`safeio`) and TFLite's affine (de)quantization (`quantize`).

May import: nothing of bnpipe's but `core` itself.
"""
