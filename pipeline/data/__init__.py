"""Data sets: the readers behind `--data` (`readers`); the checks, scaling and preprocessing every
source goes through (`dataset`), its seeded splits (`splits`) and digest (`fingerprint`); and
float regression targets (`targets`).

May import: `store` and `core`.
"""
