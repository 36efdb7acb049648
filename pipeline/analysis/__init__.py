"""Analysis of numbers, not files: statistics behind every accuracy claim (`stats`), how far one
quantized tensor is from its float reference (`layerstats`), and the operator-by-operator
comparison of an integer model with its float twin (`fakequant`, `layerwise`).

May import: `tflite`, `runtimes`, `store` and `core`.
"""
