"""The stages, one module each: train, fold, export, verify, bench, fit, layers. A stage reads its
inputs from the artifacts dir, writes its files and one manifest record, and returns a dataclass.

May import: the shared rooms (`data`, `models`, `training`, `folding`, `tflite`, `analysis`,
`report`, `runtimes`, `fit`), `store` and `core`. A stage never imports another stage: what two
stages share lives below them.
"""
