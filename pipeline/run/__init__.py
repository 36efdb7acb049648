"""Orchestration: the table of stages (`table`) that every CLI command goes through, and `bnpipe
run` (`runner`), which walks that table and skips what is up to date.

May import: `stages`, every shared room below them, `store` and `core`. Nothing imports it but the
CLI.
"""
