"""TFLite files: reading and checking them without an interpreter (`file`), Keras → TFLite
conversion and quantization-aware training (`convert`), which operators a model may become
(`opset`), MAC counts (`macs`) and C arrays for firmware (`carray`).

May import: `models`, `store` and `core`.
"""
