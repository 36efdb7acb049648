"""Keras models: the article's networks and its BN layer (`model`, `custom_bn`), the one door a
user's model file comes through, Keras 3 files and their translation into tf_keras (`keras3`), and
a model's layer graph read from its config (`graph`).

May import: `store` and `core`.
"""
