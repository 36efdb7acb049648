"""Training: resume checkpoints (`checkpoints`), tf.data input (`stream`), and training on several
devices or machines (`distribute`, `cluster`, `syncbn`).

May import: `data`, `models`, `store` and `core`.
"""
