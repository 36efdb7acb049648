"""TFLite files: reading and checking them without an interpreter (`file`), Keras → TFLite
conversion and quantization-aware training (`convert`), which operators a model may become
(`opset`), MAC counts (`macs`), C arrays for firmware (`carray`) and outputs paired with their
tensors by name through the signature (`signature`).

May import: `models`, `store` and `core`.
"""
