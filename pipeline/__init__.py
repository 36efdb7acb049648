"""bnpipe: a Keras classifier with batch normalization, folded, quantized to int8 and verified.

The environment variable below must be set before TensorFlow is first imported anywhere:
tensorflow-model-optimization 0.8 only works with Keras 2 (`tf-keras`), and TensorFlow picks
its Keras once, at import. This is the one place bnpipe sets it.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is noise on a terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
