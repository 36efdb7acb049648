"""A legacy HDF5 model file (`.h5`, `.hdf5`), taken through a safe path: its JSON config is read
from the root attribute `model_config` (h5py, from the bytes the door read), checked by
configcheck exactly as a `.keras` file's config.json, the model built from that checked config
by the Keras that saved it (no custom objects), and only the weights loaded from the HDF5.

Keras's own HDF5 loader is never called: it deserializes whatever the file holds (a Lambda's
bytecode included) with no safe mode.
"""

from __future__ import annotations

import copy
import io
import sys
import tempfile
from pathlib import Path

from pipeline.core.errors import ModelError
from pipeline.models.configcheck import CONFIG_MAX_BYTES, KERAS3, check_config, kind_of

H5_SUFFIXES = (".h5", ".hdf5")
# Keys older Keras wrote that only training (or nothing) uses and Keras 3 rejects, by layer class:
# a DepthwiseConv2D with `groups: 1` (inherited from Conv2D in Keras 2; one group is what a
# depthwise convolution is).
DROPPED_KEYS = {"DepthwiseConv2D": {"groups": 1}}


# Serialized code (a Python function by name, Keras 3's lambda) is never taken as Keras's own.
CODE_CLASSES = ("function", "__lambda__")


def is_h5_name(path: Path) -> bool:
    return path.suffix.lower() in H5_SUFFIXES


def read_h5(path: Path, data: bytes) -> tuple[str, dict]:
    """(which Keras saved it, its model config checked) from the HDF5 bytes `data`; ModelError
    (one line) for a file that is not HDF5, holds weights only, or holds what bnpipe refuses."""
    from pipeline.core.safeio import loads_json

    raw, version = _model_attrs(path, data)
    if not isinstance(raw, (bytes, str)) or len(raw) > CONFIG_MAX_BYTES:
        raise ModelError(f"{path}: model_config is not one string of at most 32 MiB")
    try:
        config = loads_json(raw)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: model_config is not JSON ({exc})") from None
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    kind = kind_of(path, {"keras_version": version} if isinstance(version, str) else {}, config)
    # HDF5 configs name Keras's layers by class alone (legacy form, no `module`): the loader looks
    # the name up among Keras's own classes. So the check reads them as Keras's own.
    check_config(_as_keras_own(config), path, nested=kind == KERAS3)
    return kind, config


def _model_attrs(path: Path, data: bytes):
    """(the root attributes model_config and keras_version) of the HDF5 bytes `data`."""
    import h5py

    try:
        h5 = h5py.File(io.BytesIO(data), "r")
    except Exception:  # h5py raises OSError and others for bytes that are not HDF5
        raise ModelError(
            f"{path} is not an HDF5 file; bnpipe loads .keras and .h5 models"
        ) from None
    with h5:
        if "model_config" not in h5.attrs:
            raise ModelError(
                f"{path} holds weights only (no model_config); bnpipe needs the whole model "
                "(model.save, not model.save_weights)"
            )
        try:
            attr = h5.attrs.get_id("model_config")
            # A string of fixed length is stored in the attribute; one of variable length (as
            # Keras writes it) in the file's heap: no longer than the file, which is bounded.
            if attr.shape == () and attr.get_storage_size() <= CONFIG_MAX_BYTES:
                return h5.attrs["model_config"], h5.attrs.get("keras_version")
        except Exception:  # a damaged attribute: h5py raises OSError, KeyError …
            pass
    raise ModelError(f"{path}: model_config is not one string of at most 32 MiB")


def _as_keras_own(config):
    """A copy of `config` in which every serialized object without a `module` key (the legacy
    form of Keras's own classes) says module "keras"; objects that name a module keep it, and
    serialized code (CODE_CLASSES) stays foreign, so check_config refuses it."""
    config = copy.deepcopy(config)
    stack = [config]
    while stack:  # iterative: a crafted config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            code = node.get("class_name") in CODE_CLASSES
            if "class_name" in node and "module" not in node and not code:
                node["module"] = "keras"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return config


def without_rejected_keys(config: dict, path: Path) -> dict:
    """`config` without the DROPPED_KEYS Keras 3 rejects, each drop said in one warning line."""
    config, dropped = copy.deepcopy(config), []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys = DROPPED_KEYS.get(node.get("class_name"), {})
            cfg = node.get("config")
            for key, value in keys.items():
                if isinstance(cfg, dict) and key in cfg and cfg[key] == value:
                    del cfg[key]
                    dropped.append(f"{key} of {str(cfg.get('name', '?'))[:80]!r}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if dropped:
        print(
            f"Warning: {path}: dropped keys Keras 3 rejects (training only): {', '.join(dropped)}",
            file=sys.stderr,
        )
    return config


def load_h5(path: Path, kind: str, config: dict, data: bytes):
    """The model built from the checked `config` by the Keras that saved it (`kind`), with the
    weights of the HDF5 bytes `data` (loaded from a private temporary copy)."""
    import warnings

    from pipeline.models.keras3_file import keras3, one_line

    if kind == KERAS3:
        config = without_rejected_keys(config, path)
        k = keras3()
    else:
        from pipeline.core.tfenv import keras

        k = keras()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _from_config(k, kind, config)
            with tempfile.TemporaryDirectory(prefix="bnpipe-model-") as folder:
                weights = Path(folder) / "model.h5"
                weights.write_bytes(data)
                model.load_weights(weights)
    except Exception as exc:  # Keras raises many types for a config or weights it cannot take
        raise ModelError(f"cannot load {path}: {one_line(exc)[:300]}") from None
    return model


def _from_config(k, kind: str, config: dict):
    """The model of `config` (checked: a Sequential or Functional of Keras's own layers) without
    custom objects. Keras 3 cannot read the legacy form through model_from_json (it looks for the
    model class by module); its model classes read their own config."""
    import json

    if kind != KERAS3:
        return k.models.model_from_json(json.dumps(config))
    model_class = k.Sequential if config["class_name"] == "Sequential" else k.Model
    return model_class.from_config(config["config"])
