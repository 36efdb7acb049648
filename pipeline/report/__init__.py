"""What a person reads: Markdown tables and PNG plots (`markdown`), verify.md of a task other than
classification (`tasks`), `bnpipe layers`' record (`layers`), and report.html, the one
self-contained page drawn from every record (`html`, with its `summary`, `sections`, `tags` and
inline-SVG `svg` charts).

May import: `store` and `core`.
"""
