"""Data sets: the readers behind `--data` (`readers`), and the checks, scaling, splits and
fingerprints every source goes through (`dataset`).

May import: `store` and `core`.
"""
