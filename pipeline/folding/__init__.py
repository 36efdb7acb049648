"""Folding BatchNormalization: the arithmetic (`maths`), where each BN can go and why the others
cannot (`plan`), and cross-layer equalization (`equalize`).

May import: `models`, `store` and `core`.
"""
