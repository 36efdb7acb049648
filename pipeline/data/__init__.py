"""Data sets: the readers behind `--data` (`readers`), and the checks, scaling, splits and
fingerprints every source goes through (`dataset`), and float regression targets (`targets`).

May import: `store` and `core`.
"""
