"""Keras models: the article's networks and BN layer (`article`, `custom_bn`); the one door a user's
model file comes through (`door`: checked, refused before deserializing what bnpipe cannot take,
loaded in safe mode, saved deterministically); the config checks for files of either Keras
(`configcheck`); Keras 3 files (`keras3_file`), their translation into tf_keras and back
(`keras3`) and its numerical proof (`translation`); and a model's layer graph (`graph`).

May import: `store` and `core`.
"""
