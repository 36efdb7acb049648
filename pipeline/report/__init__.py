"""What a person reads: Markdown tables and PNG plots (`markdown`), verify.md of a task other than
classification (`tasks`), and `bnpipe layers`' record (`layers`).

May import: `store` and `core`.
"""
