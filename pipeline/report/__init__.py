"""What a person reads: Markdown tables and PNG plots (`markdown`), and `bnpipe layers`' record
(`layers`).

May import: `store` and `core`.
"""
