"""Fingerprint of a fitted model: a digest of everything that determines what it decodes to.

Used to key caches of decoded values (:mod:`napari_miner.core.estimate_cache`, the lazy pyramid's
dask task names), so that two different models never share an entry and a model changed in place
gets a new fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .level_bank import LevelModel

__all__ = ["model_fingerprint"]

_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _is_stored(level: Any) -> bool:
    """Whether a level is read from a store (it then names its identity: ``fingerprint()``)."""
    return callable(getattr(level, "fingerprint", None))


def _tensors(model: LevelModel) -> list[torch.Tensor]:
    banks = [
        bank for level in model.levels if not _is_stored(level) for bank in (level, *level.extra)
    ]
    return [t for bank in banks for t in (bank.block_ids, *bank.weights, *bank.biases)]


def _stored_tokens(model: LevelModel) -> list[str]:
    """Identity of the levels read from a store: its path and its tile records (checksums)."""
    return [level.fingerprint() for level in model.levels if _is_stored(level)]


def _state(model: LevelModel) -> tuple:
    """Cheap token that changes when a tensor is replaced or modified in place (torch ops)."""
    tensors = tuple((id(t), t._version) for t in _tensors(model))
    stored = tuple(id(level) for level in model.levels)
    return (id(model.layout), id(model.config), len(model.levels), tensors, stored)


def model_fingerprint(model: LevelModel) -> str:
    """Hex digest of everything that determines what ``model`` decodes to.

    Hashes the layout, the config, every level's grid, block indices, weights and biases. The
    digest is computed once per model object and cached (recomputed if one of its tensors was
    replaced or modified in place by a torch operation).
    """
    state = _state(model)
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    digest = hashlib.blake2b(digest_size=16)
    header = {
        "layout": model.layout.to_dict(),
        "config": model.config.to_dict(),
        "grids": [[list(lv.grid.shape), lv.grid.block_size] for lv in model.levels],
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for token in _stored_tokens(model):
        digest.update(token.encode())
    for tensor in _tensors(model):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    value = digest.hexdigest()
    _FINGERPRINTS[model] = (state, value)
    return value
