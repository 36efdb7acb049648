"""Layer names users write (`hidden layer`, `couche_cachée`) through a TensorFlow that takes only
`[A-Za-z0-9.][A-Za-z0-9_.-]*` as a scope: the door rewrites config.json's names to safe ones
before either Keras builds anything, and keeps the map back to the user's names for the reports.

Both Keras key a `.keras` file's weights by class (`layers/dense_1/vars/0`), not by layer name,
so a renamed config loads the same weights. A name with control characters (NUL, newline,
right-to-left marks …) is refused, naming the layer by position and showing the name escaped.

Nothing here imports TensorFlow or Keras: the rewrite works on config.json as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import ModelError
from pipeline.core.safeio import MAX_INPUT_BYTES
from pipeline.models.dag import shown

SAFE = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.-]*")  # TensorFlow's root scope names, minus / \ >
SAFE_MAX = 120  # characters of a safe name; a user's longer name is cut, then made unique
NESTED_MODELS = ("Sequential", "Functional")
NAMES_ATTR = "bnpipe_user_names"  # {safe name: user's name} on a model the door loaded renamed


def safe_names(config) -> dict[str, str]:
    """{user's name: safe name} for every model and layer name in `config` (nested models too)
    that TensorFlow would refuse; {} when all are safe. ModelError for a name with control
    characters. Deterministic: the same config gives the same map."""
    found = list(_names(config))
    for where, name in found:
        if isinstance(name, str) and not name.isprintable():
            raise ModelError(
                f"{where} is named {shown(name)}, which holds control characters; rename it "
                "(names with them are not shown safely anywhere)"
            )
    names = [name for _, name in found if isinstance(name, str)]
    taken, renames = set(names), {}
    for name in names:
        if SAFE.fullmatch(name) or name in renames:
            continue
        base = _ascii(name)
        safe, n = base, 1
        while safe in taken:
            safe, n = f"{base}_{n}", n + 1
        taken.add(safe)
        renames[name] = safe
    return renames


def _ascii(name: str) -> str:
    """`name` in TensorFlow's alphabet: accents dropped (é → e), anything else an underscore."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", plain)[:SAFE_MAX]
    return safe if SAFE.fullmatch(safe) else f"layer{safe}"


def _names(config, where: str = "the model") -> Iterator[tuple[str, object]]:
    """(position, name) of the model and of every layer in it, nested models included."""
    stack = [(config, where, 0)]
    while stack:
        model, label, depth = stack.pop()
        inner = model.get("config") if isinstance(model, dict) else None
        if not isinstance(inner, dict):
            continue
        yield label, inner.get("name")
        layers = inner.get("layers")
        for i, entry in enumerate(layers if isinstance(layers, list) else []):
            if not isinstance(entry, dict):
                continue
            at = f"layer {i} ({str(entry.get('class_name'))[:40]}) of {label}"
            cfg = entry.get("config")
            yield at, cfg.get("name") if isinstance(cfg, dict) else None
            if "name" in entry:
                yield at, entry.get("name")
            if entry.get("class_name") in NESTED_MODELS and depth < 8:
                stack.append((entry, f"model {i} of {label}", depth + 1))


def renamed(config, renames: dict[str, str]):
    """A copy of `config` with every name in `renames` replaced: layer and model names and every
    reference to a layer (a call's inputs in either Keras's form, input_layers, output_layers).
    `config` is not changed."""
    config = json.loads(json.dumps(config))
    stack = [config]
    while stack:  # iterative: a crafted config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("name",):
                if isinstance(node.get(key), str) and node[key] in renames:
                    node[key] = renames[node[key]]
            stack.extend(v for k, v in node.items() if k != "name")
        elif isinstance(node, list):
            # [layer, node, tensor(, kwargs)]: a tf_keras call input, a Keras 3 keras_history,
            # an entry of input_layers / output_layers.
            ref = 3 <= len(node) <= 4 and isinstance(node[0], str) and node[0] in renames
            if ref and isinstance(node[1], int) and isinstance(node[2], int):
                node[0] = renames[node[0]]
            stack.extend(node)
    return config


@contextlib.contextmanager
def loadable(path: Path, config) -> Iterator[tuple[Path, dict[str, str]]]:
    """(a `.keras` file to load, {safe name: user's name}): `path` itself when every name is
    safe, else a copy in a temporary directory whose config.json has the safe names (removed when
    the block ends)."""
    renames = safe_names(config)
    if not renames:
        yield path, {}
        return
    with tempfile.TemporaryDirectory(prefix="bnpipe-names-") as tmp:
        copy = Path(tmp) / path.name
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(copy, "w") as dest:
            if sum(info.file_size for info in src.infolist()) > MAX_INPUT_BYTES:
                raise ModelError(f"{path} unpacks to more than {MAX_INPUT_BYTES:,} bytes")
            for info in src.infolist():
                if info.filename == "config.json":
                    dest.writestr(info, json.dumps(renamed(config, renames)).encode("utf-8"))
                    continue
                with src.open(info) as member, dest.open(info, "w") as out:
                    shutil.copyfileobj(member, out, 1 << 20)  # in chunks: weights may be large
        yield copy, {safe: user for user, safe in renames.items()}


def user_names(model, names: dict[str, str]):
    """`model`, noting {safe name: user's name} on it (NAMES_ATTR) when the door renamed."""
    if names:
        object.__setattr__(model, NAMES_ATTR, dict(names))
    return model


def user_name(model, name: str) -> str:
    """The user's name for a layer or model name of a model the door loaded (itself if kept)."""
    return getattr(model, NAMES_ATTR, {}).get(name, name)


def with_user_names(obj, names: dict[str, str]):
    """A copy of a report (dataclasses, dicts, lists, tuples) in which every string that is a
    safe name in `names` is the user's name again; `obj` itself when `names` is empty."""
    if not names:
        return obj
    if isinstance(obj, str):
        return names.get(obj, obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: with_user_names(getattr(obj, f.name), names)
            for f in dataclasses.fields(obj)
            if f.init
        }
        return dataclasses.replace(obj, **fields)
    if isinstance(obj, dict):
        return {with_user_names(k, names): with_user_names(v, names) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(with_user_names(v, names) for v in obj)
    return obj
