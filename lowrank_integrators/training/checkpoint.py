"""Checkpoints of a training run: the full state, so that a resumed run repeats the original.

A checkpoint directory holds ``state.npz`` (every array of the :class:`TrainState`: factors,
integrator times, other parameters, optimizer state) and ``meta.json`` (the run's configuration,
history, epoch and the state of its random generator). Both are written to temporary names and
renamed, so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..factors import LowRankMatrix
from ..integrators.base import State
from .client import TrainState

__all__ = ["load_checkpoint", "save_checkpoint"]

_STATE = "state.npz"
_META = "meta.json"


def save_checkpoint(directory: str | os.PathLike, state: TrainState, meta: dict[str, Any]) -> None:
    """Write ``state`` and the JSON-serialisable ``meta`` to ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
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
    counts = {
        "n_layers": len(state.layers),
        "n_params": len(state.params),
        "step": state.step,
    }
    tmp_state = d / (_STATE + ".tmp.npz")
    np.savez(tmp_state, **arrays)
    os.replace(tmp_state, d / _STATE)
    tmp_meta = d / (_META + ".tmp")
    tmp_meta.write_text(json.dumps({"state": counts, **meta}, indent=1))
    os.replace(tmp_meta, d / _META)


def load_checkpoint(directory: str | os.PathLike) -> tuple[TrainState, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; returns the state and the meta."""
    d = Path(directory)
    if not (d / _STATE).is_file() or not (d / _META).is_file():
        raise FileNotFoundError(f"no checkpoint in {d} (expected {_STATE} and {_META})")
    meta = json.loads((d / _META).read_text())
    counts = meta.pop("state")
    with np.load(d / _STATE) as z:
        arrays = {k: z[k] for k in z.files}
    layers = []
    for i in range(counts["n_layers"]):
        Y = LowRankMatrix(
            arrays[f"layer{i}.U"], arrays[f"layer{i}.S"], arrays[f"layer{i}.V"], check=False
        )
        layers.append(State(Y=Y, t=float(arrays[f"layer{i}.t"])))
    params = tuple(arrays[f"param{j}"] for j in range(counts["n_params"]))
    opt: dict[str, Any] = {
        "layers": [{} for _ in range(counts["n_layers"])],
        "params": [{} for _ in range(counts["n_params"])],
    }
    for key, value in arrays.items():
        if key.startswith("opt."):
            _, group, i, name = key.split(".", 3)
            opt[group][int(i)][name] = value
    state = TrainState(layers=tuple(layers), params=params, optimizer=opt, step=counts["step"])
    return state, meta
