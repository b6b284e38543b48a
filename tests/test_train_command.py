"""``train`` and ``evaluate`` as a user meets them: help, output folder, checks before work,
checkpoints that are never torn."""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import re

import numpy as np
import pytest

from lowrank_integrators.cli import build_parser, main
from lowrank_integrators.training import checkpoint as ckpt
from lowrank_integrators.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from lowrank_integrators.training.experiment import RunConfig, run_training

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")

SMALL = [
    "--dataset", "digits", "--arch", "64-24-16-10", "--rank", "6", "--lr", "0.2",
    "--batch-size", "32", "--n-train", "128", "--n-test", "64", "--no-progress",
]  # fmt: skip


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["train", "evaluate", "validate"])
def test_help_shows_a_line_and_the_default_of_every_flag(command):
    p = subparser(command)
    text = p.format_help()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.option_strings or action.dest} has no help line"
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings:
            assert f"(default: {action.default})" in " ".join(p.format_help().split())


def test_a_run_writes_model_history_curves_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.npz", "history.csv", "summary.json"} <= names
    pytest.importorskip("matplotlib")
    assert "curves.png" in names
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "test_loss", "test_accuracy", "rank_layer1", "rank_layer2"} <= set(
        rows[0]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["model"] == str(out / "model.npz")
    assert float(rows[1]["test_accuracy"]) == pytest.approx(summary["test_accuracy"])


def test_evaluate_prints_accuracy_ranks_and_compression_of_a_saved_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    trained = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    result = tmp_path / "eval.json"
    code = main(
        ["evaluate", str(out / "model.npz"), "--n-test", "64", "--json", str(result)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "test accuracy" in text and "ranks per low-rank layer" in text and "compression" in text
    r = json.loads(result.read_text())
    assert r["test_accuracy"] == pytest.approx(trained["test_accuracy"])  # same 64 examples
    assert r["ranks"] == trained["ranks"]
    assert r["compression_evaluation"] == pytest.approx(trained["compression_evaluation"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n-train", "0"], "n_train must be >= 1"),
        (["--n-train", "-5"], "n_train must be >= 1"),
        (["--n-test", "0"], "n_test must be >= 1"),
        (["--rmin", "5", "--rmax", "3"], "rmax must be >= rmin"),
        (["--rank", "20"], "rank 20 is larger than layer 2 \\(24 -> 16\\) allows: at most 16"),
        (["--rmin", "0"], "rmin must be >= 1"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--lr", "-1"], "lr must be"),
        (["--momentum", "1.5"], "momentum must be"),
    ],
)
def test_bad_values_exit_2_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", *SMALL, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists()  # nothing was created, let alone trained


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--out", "FILE"], "--out: .* exists and is not a folder"),
        (["--json", "DIR"], "--json: .* is a folder"),
        (["--checkpoint", "DIR"], "--checkpoint: .* is a folder"),
        (["--out", "FILE/sub"], "--out: .* is a file, not a folder"),
        (["--data-dir", "FILE"], "--data-dir: .* is not a folder"),
    ],
)
def test_bad_output_paths_exit_2_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    flags = [str(tmp_path / f) if f in ("FILE", "DIR", "FILE/sub") else f for f in flags]
    started = []
    monkeypatch.setattr(
        "lowrank_integrators.training.experiment.load_dataset",
        lambda *a, **k: started.append(1),
    )
    args = ["train", *SMALL, "--out", str(tmp_path / "run"), *flags]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not started


def small_run(tmp_path):
    """A one-epoch run; returns its checkpoint file."""
    cfg = RunConfig(arch="64-24-10", rank=4, n_train=64, n_test=32, epochs=1, batch_size=32)
    path = tmp_path / "model.npz"
    run_training(cfg, checkpoint=path, progress=False)
    return path


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = small_run(tmp_path)
    state, meta = load_checkpoint(path)
    before = path.read_bytes()

    def savez_then_crash(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")  # the new file is half written when the power fails
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.np, "savez", savez_then_crash)
    newer = {**meta, "history": [*meta["history"], {"epoch": 2}]}
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, state, newer)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    _, meta_back = load_checkpoint(path)
    assert meta_back == meta  # old weights with old metadata, never new with old


def test_state_and_metadata_are_one_unit(tmp_path):
    path = small_run(tmp_path)
    with np.load(path) as z:
        assert "__meta__" in z.files and "layer0.U" in z.files
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no-meta"])
def test_a_corrupt_checkpoint_is_a_clear_error_and_exit_2(tmp_path, capsys, damage):
    path = small_run(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, x=np.zeros(3))
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)
    args = ["--arch", "64-24-10", "--rank", "4", "--n-train", "64", "--n-test", "32",
            "--batch-size", "32", "--no-progress"]  # fmt: skip
    assert main(["train", *args, "--epochs", "2", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "Traceback" not in err
    assert main(["evaluate", str(path)]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_resume_checks_every_array_shape(tmp_path):
    path = small_run(tmp_path)
    state, meta = load_checkpoint(path)
    bad_params = list(state.params)
    bad_params[0] = np.zeros((23,), dtype=np.float32)  # a bias of the wrong width
    save_checkpoint(path, type(state)(state.layers, tuple(bad_params), state.optimizer,
                                      state.step), meta)  # fmt: skip
    with pytest.raises(ValueError, match=r"param0 has shape \(23,\), expected \(24,\)"):
        run_training(
            RunConfig(**{**meta["config"], "epochs": 2}),
            checkpoint=path,
            resume=True,
            progress=False,
        )


def test_evaluate_of_a_missing_model_exits_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none.npz")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "folder" in capsys.readouterr().err


def test_a_checkpoint_in_an_unwritable_folder_exits_2_before_any_work(
    tmp_path, capsys, monkeypatch
):
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # the folder refuses new files, even for root
        if dir is not None and pathlib.Path(dir) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    started = []
    monkeypatch.setattr(
        "lowrank_integrators.training.experiment.load_dataset",
        lambda *a, **k: started.append(1),
    )
    code = main(
        ["train", *SMALL, "--out", str(tmp_path / "run"), "--checkpoint", str(locked / "m.npz")]
    )
    assert code == 2
    assert "--checkpoint: cannot write into" in capsys.readouterr().err
    assert not started
