"""Analysis of numbers, not files: statistics behind every accuracy claim (`stats`), how far one
quantized tensor is from its float reference (`layerstats`), and the operator-by-operator
comparison of an integer model with its float twin (`fakequant`, `layerwise`); what a final SOFTMAX
does to output steps (`softmax`); each output's task (`tasks`), its measures and gates
(`taskmetrics`), and their use by export (`taskrun`) and verify (`taskverify`).

May import: `tflite`, `runtimes`, `store` and `core`.
"""
