"""tfenv.py: the filter for native code's stderr noise (no TensorFlow needed)."""

import os

from pipeline.core.tfenv import NATIVE_NOISE, native_noise_filtered


def test_native_noise_is_dropped_and_real_messages_pass(capfd):
    with native_noise_filtered():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 node_def_util.cc:682] NodeDef mentions attribute x which is not\n")
        os.write(2, b"ERROR: Node FULLY_CONNECTED failed to prepare\n")
        assert capfd.readouterr().err == ""  # held until the block ends
    assert capfd.readouterr().err == "ERROR: Node FULLY_CONNECTED failed to prepare\n"
    assert len(NATIVE_NOISE) == 2


def test_held_messages_are_passed_on_when_the_block_raises(capfd):
    try:
        with native_noise_filtered():
            os.write(2, b"fatal: something native\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert capfd.readouterr().err == "fatal: something native\n"
    os.write(2, b"after\n")  # file descriptor 2 is stderr again
    assert capfd.readouterr().err == "after\n"
