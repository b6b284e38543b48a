"""Checkpoints of a training run: the full state in one file, so a resumed run repeats the original.

A checkpoint is a single ``.npz`` file holding every array of the :class:`TrainState` (factors,
integrator times, other parameters, optimizer state) together with the run's metadata
(configuration, history, epoch, the state of its random generator) as a JSON document. The file
is written to a temporary name in the same folder and renamed into place, so an interrupted
save or a full disk leaves the previous checkpoint or the new one, never weights of one epoch
with the metadata of another.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write
from ..factors import LowRankMatrix
from ..integrators.base import State
from .client import TrainState

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

#: Identifier stored in every checkpoint; bump when the layout changes.
FORMAT = "lowrank-integrators/checkpoint/1"

_META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, truncated, incomplete or foreign."""


def save_checkpoint(path: str | os.PathLike, state: TrainState, meta: dict[str, Any]) -> Path:
    """Write ``state`` and the JSON-serialisable ``meta`` to the file ``path`` atomically.

    Parameters
    ----------
    path : path
        The checkpoint file (conventionally ``*.npz``); its folder is created if needed.
    state : TrainState
    meta : dict
        Configuration, history and anything else JSON can hold.

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"checkpoint must be a file path, got the folder {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for i, st in enumerate(state.layers):
        U, S, V = st.Y
        arrays[f"layer{i}.U"] = np.asarray(U)
        arrays[f"layer{i}.S"] = np.asarray(S)
        arrays[f"layer{i}.V"] = np.asarray(V)
        arrays[f"layer{i}.t"] = np.asarray(st.t)
    for j, p in enumerate(state.params):
        arrays[f"param{j}"] = np.asarray(p)
    for group in ("layers", "params"):
        for i, slot in enumerate(state.optimizer[group]):
            for key, value in slot.items():
                if value is not None:
                    arrays[f"opt.{group}.{i}.{key}"] = np.asarray(value)
    document = {
        "format": FORMAT,
        "state": {"n_layers": len(state.layers), "n_params": len(state.params), "step": state.step},
        "meta": meta,
    }
    text = json.dumps(document, allow_nan=False)
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(target, "wb") as fh:
        np.savez(fh, **arrays)
    return target


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated file: {exc})"
        ) from None
    if _META not in arrays:
        raise CheckpointError(f"{path} is not a checkpoint of this library (no metadata)")
    try:
        document = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint metadata is corrupt ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise CheckpointError(f"{path}: unknown checkpoint format {found!r} (expected {FORMAT})")
    return document, arrays


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainState, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; returns the state and the meta.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    CheckpointError
        When the file is a folder, corrupt, truncated, or misses arrays it announces.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint must be a file, got the folder {p}")
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}")
    document, arrays = _read(p)
    try:
        counts = document["state"]
        n_layers, n_params = int(counts["n_layers"]), int(counts["n_params"])
        layers = []
        for i in range(n_layers):
            Y = LowRankMatrix(
                arrays[f"layer{i}.U"], arrays[f"layer{i}.S"], arrays[f"layer{i}.V"], check=False
            )
            layers.append(State(Y=Y, t=float(arrays[f"layer{i}.t"])))
        params = tuple(arrays[f"param{j}"] for j in range(n_params))
        opt: dict[str, Any] = {
            "layers": [{} for _ in range(n_layers)],
            "params": [{} for _ in range(n_params)],
        }
        for key, value in arrays.items():
            if key.startswith("opt."):
                _, group, i, name = key.split(".", 3)
                opt[group][int(i)][name] = value
        state = TrainState(
            layers=tuple(layers), params=params, optimizer=opt, step=int(counts["step"])
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: the checkpoint is incomplete ({exc!r} is missing)") from None
    return state, document["meta"]
