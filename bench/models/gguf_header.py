"""A GGUF file's header (metadata, tensor table, bits per weight), read with llama.cpp's own `gguf` reader."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def _value(field: Any) -> Any:
    """A metadata value as Python: scalars and strings as they are, arrays reduced to their length."""
    from gguf import GGUFValueType

    # a key/value field's parts: key length, key, value type, then the value (for an array: element type, count, ...)
    if field.types[0] == GGUFValueType.ARRAY:
        return {"array_len": int(field.parts[4][0])}
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")
    return field.parts[-1][0].item()


def read_gguf_header(path: Path) -> dict[str, Any]:
    """A GGUF file's version, metadata (arrays reduced to their length) and tensor table summary.

    tensor_types counts tensors by storage type, weight_share is each type's share of the weights;
    tensor_bytes is the tensor data's size and bits_per_weight that size in bits over the number of weights.
    A file that is not GGUF, or is cut short, is a ValueError that names it.

    The reader walks every element of the vocabulary arrays (seconds for a 100k-token vocabulary), so a file's
    header is read once and kept for as long as the file (device, inode, size, mtime) is unchanged.
    """
    path = Path(path)
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # a rename (partial -> final) keeps it
    if key not in _SEEN:
        if len(_SEEN) >= 16:
            _SEEN.pop(next(iter(_SEEN)))
        _SEEN[key] = _read(path)
    return copy.deepcopy(_SEEN[key])


_SEEN: dict[tuple[int, int, int, int], dict[str, Any]] = {}


def _fields(reader: Any) -> tuple[dict[str, Any], int, list[tuple[str, int, int]]]:
    """Metadata (without the reader's own GGUF.* entries), format version and (type, elements, bytes) per tensor."""
    meta = {name: _value(fld) for name, fld in reader.fields.items() if not name.startswith("GGUF.")}
    version = int(reader.fields["GGUF.version"].parts[0][0])
    tensors = [(t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors]
    return meta, version, tensors


def _read(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
    try:
        meta, version, tensors = _fields(GGUFReader(path))  # the reader and its memory map end with the call
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
        raise ValueError(f"{path.name} is not a readable GGUF file: {exc}") from None
    types: dict[str, int] = {}
    weights: dict[str, int] = {}
    for name, count, _ in tensors:
        types[name] = types.get(name, 0) + 1
        weights[name] = weights.get(name, 0) + count
    n_weights = sum(weights.values())
    data_bytes = sum(nbytes for _, _, nbytes in tensors)
    share = {k: round(v / n_weights, 4) for k, v in sorted(weights.items(), key=lambda kv: -kv[1])} if n_weights else {}
    return {"version": version, "tensor_count": len(tensors), "metadata": meta,
            "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])), "weight_share": share,
            "params": n_weights, "tensor_bytes": data_bytes,
            "bits_per_weight": round(data_bytes * 8 / n_weights, 3) if n_weights else None}
