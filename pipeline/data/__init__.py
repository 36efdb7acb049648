"""Data sets: the readers behind `--data` (`readers`), and the checks, scaling, splits and
fingerprints every source goes through (`dataset`, `splits`, `fingerprint`). and float regression targets (`targets`).

May import: `store` and `core`.
"""
