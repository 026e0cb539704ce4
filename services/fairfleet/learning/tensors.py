"""Model weights and updates as bytes: safetensors layout, flat vectors, no I/O.

Tensors never travel as JSON lists or base64. A state dict is serialised with
``safetensors.torch.save`` (a JSON header of names, dtypes, shapes and offsets followed by the raw
little-endian bytes); the aggregator and the strategies work on one flat float32 vector.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from fairfleet.errors import PayloadError

StateDict = dict[str, torch.Tensor]


def to_safetensors_bytes(state: StateDict, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise a state dict (contiguous CPU copies) into safetensors bytes."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    return bytes(_st_save(tensors, metadata=metadata))


def from_safetensors_bytes(data: bytes) -> StateDict:
    """Parse safetensors bytes, keys sorted by name; malformed input raises PayloadError, never a
    crash. Sorted because ``safetensors.torch.load`` returns its tensors in an order that changes
    from call to call (a Rust hash map's): :func:`flatten` of its dict was a different vector
    each time. To flatten in a model's own order, index by the model's names instead."""
    try:
        return dict(sorted(_st_load(data).items()))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise PayloadError(f"Not a valid safetensors payload ({len(data)} bytes): {exc}") from exc


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def flatten(state: StateDict) -> torch.Tensor:
    """Concatenate all tensors (in key order of the dict) into one flat float32 vector."""
    if not state:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in state.values()])


def unflatten(vector: torch.Tensor | np.ndarray, like: StateDict) -> StateDict:
    """Split a flat vector back into tensors shaped and typed like ``like`` (same key order)."""
    vec = torch.as_tensor(vector)
    expected = sum(t.numel() for t in like.values())
    if vec.ndim != 1 or vec.numel() != expected:
        raise PayloadError(
            f"Flat vector has shape {tuple(vec.shape)}; expected ({expected},) for this model."
        )
    out: StateDict = {}
    offset = 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = vec[offset : offset + n].reshape(ref.shape).to(ref.dtype).clone()
        offset += n
    return out


def shapes_of(state: StateDict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) signature, used to validate updates against the global model."""
    return {
        name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()
    }
