"""The artifact store: artifact file names (`files`), atomic writes and content hashes
(`artifacts`), the manifest (`manifest`), a stage run as one transaction (`lineage`), and the
one-writer lock (`lock`).

May import: `core` only.
"""
