"""``lowrank-integrators train``: summary, checkpoints, exact resume, divergence, data errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowrank_integrators.cli import main
from lowrank_integrators.training import Adam, LowRankTraining, TrainingDiverged
from lowrank_integrators.training.checkpoint import load_checkpoint, save_checkpoint
from lowrank_integrators.training.data import load_dataset
from lowrank_integrators.training.experiment import RunConfig, make_integrator, run_training
from lowrank_integrators.training.network import MLP, Layer

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")

SMALL = [
    "--dataset", "digits", "--arch", "64-24-16-10", "--rank", "6", "--lr", "0.2",
    "--batch-size", "32", "--n-train", "256", "--n-test", "128", "--no-progress",
]  # fmt: skip


def test_train_command_prints_and_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(
        ["train", *SMALL, "--epochs", "2", "--tau", "0.1", "--json", str(out),
         "--out", str(tmp_path / "run")]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    for needle in ("test accuracy", "ranks per low-rank layer", "compression", "time per epoch"):
        assert needle in text
    s = json.loads(out.read_text())
    assert s["status"] == "success"
    assert s["epochs_completed"] == 2
    assert len(s["ranks"]) == 2
    assert 0.0 <= s["test_accuracy"] <= 1.0
    assert s["parameters"]["evaluation"] < s["parameters"]["dense"]
    assert s["compression_evaluation"] > s["compression_training"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "momentum"])
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, optimizer):
    cfg = RunConfig(
        dataset="digits", arch="64-24-16-10", rank=6, lr=0.1, batch_size=32, n_train=256,
        n_test=64, epochs=3, optimizer=optimizer, dtype="float64",
    )  # fmt: skip
    full = run_training(cfg, checkpoint=tmp_path / "full.npz", progress=False)
    run_training(cfg, checkpoint=tmp_path / "cut.npz", progress=False, stop_after=1)
    resumed = run_training(cfg, checkpoint=tmp_path / "cut.npz", resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "full.npz")
    b, _ = load_checkpoint(tmp_path / "cut.npz")
    for Ya, Yb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(Ya.to_dense(), Yb.to_dense())
    for pa, pb in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(pa, pb)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]


def test_resume_refuses_a_different_run_and_names_the_fields(tmp_path, capsys):
    cfg = RunConfig(arch="64-24-10", rank=4, n_train=64, n_test=32, epochs=1, batch_size=32)
    ckpt = tmp_path / "model.npz"
    run_training(cfg, checkpoint=ckpt, progress=False)
    other = RunConfig(
        arch="64-24-10", rank=4, n_train=64, n_test=32, epochs=2, batch_size=32, lr=1.0, seed=3
    )
    with pytest.raises(ValueError, match="different run") as err:
        run_training(other, checkpoint=ckpt, resume=True, progress=False)
    assert "lr: 0.05 in the checkpoint, 1.0 now" in str(err.value)
    assert "seed: 0 in the checkpoint, 3 now" in str(err.value)
    assert "rank" not in str(err.value).split("(")[1]  # equal fields are not named
    args = ["train", "--arch", "64-24-10", "--rank", "4", "--n-train", "64", "--n-test", "32",
            "--batch-size", "32", "--no-progress", "--out", str(tmp_path), "--resume"]  # fmt: skip
    assert main([*args, "--epochs", "2", "--lr", "1.0"]) == 2
    assert "lr: 0.05 in the checkpoint, 1.0 now" in capsys.readouterr().err
    assert main([*args, "--epochs", "2"]) == 0
    assert main(["train", "--resume", "--no-progress", "--out", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_checkpoint_round_trip_keeps_every_array(tmp_path, rng):
    net = MLP([Layer(8, 6, "lowrank", 3), Layer(6, 3, "dense")])
    W, P = net.init(rng)
    client = LowRankTraining(
        make_integrator("augmented-bug", 0.1, 3, 1, None), net.gradient, Adam()
    )
    state = client.init(W, P)
    for _ in range(2):
        state, _ = client.step(state, (rng.standard_normal((10, 8)), rng.integers(0, 3, 10)), 0.1)
    save_checkpoint(tmp_path / "c.npz", state, {"note": [1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # one file, no leftovers
    back, meta = load_checkpoint(tmp_path / "c.npz")
    assert meta == {"note": [1, 2]}
    assert back.step == state.step and back.ranks == state.ranks
    assert [s.t for s in back.layers] == [s.t for s in state.layers]
    for A, B in zip(state.weights, back.weights, strict=True):
        for x, y in zip(A, B, strict=True):
            np.testing.assert_array_equal(x, y)
    for group in ("layers", "params"):
        for sa, sb in zip(state.optimizer[group], back.optimizer[group], strict=True):
            assert sa.keys() == sb.keys()
            for k in sa:
                np.testing.assert_array_equal(sa[k], sb[k])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_a_diverging_run_stops_with_a_message_and_keeps_its_last_checkpoint(tmp_path, monkeypatch):
    cfg = RunConfig(arch="64-24-10", rank=4, n_train=64, n_test=32, epochs=3, batch_size=32)
    original = LowRankTraining.step
    calls = {"n": 0}

    def step(self, state, batch, lr):
        calls["n"] += 1
        if calls["n"] > 2:  # two steps per epoch: the second epoch diverges
            raise TrainingDiverged("the loss is nan at step 2")
        return original(self, state, batch, lr)

    monkeypatch.setattr(LowRankTraining, "step", step)
    s = run_training(cfg, checkpoint=tmp_path / "m.npz", progress=False)
    assert s["status"] == "diverged"
    assert "epoch 2" in s["message"] and "kept" in s["message"]
    assert s["epochs_completed"] == 1
    state, meta = load_checkpoint(tmp_path / "m.npz")
    assert len(meta["history"]) == 1 and state.step == 2


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", path=tmp_path)
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("cifar")


def test_digits_split_is_fixed_and_disjoint():
    a = load_dataset("digits")
    b = load_dataset("digits", dtype=np.float32)
    assert a.X_train.shape == (1438, 64) and a.X_test.shape == (359, 64)
    assert a.n_classes == 10
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert b.X_train.dtype == np.float32 and a.X_train.max() <= 1.0


def test_bad_command_line_values_exit_with_status_2(capsys, tmp_path):
    assert main(["train", *SMALL, "--arch", "64-x-10", "--out", str(tmp_path)]) == 2
    assert "arch" in capsys.readouterr().err
    assert main(["train", *SMALL, "--arch", "32-10", "--out", str(tmp_path)]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_missing_mnist1d_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match="pip install mnist1d"):
        load_dataset("mnist1d")


@pytest.mark.parametrize(
    "name", ["augmented-bug", "bug", "parallel-bug", "abc-psi", "midpoint-bug", "psi", "vanilla"]
)
def test_every_command_line_method_trains(name):
    cfg = RunConfig(
        arch="64-16-10", integrator=name, rank=4, n_train=256, n_test=128, epochs=3,
        batch_size=32, lr=0.3, dtype="float64",
    )  # fmt: skip
    s = run_training(cfg, progress=False)
    assert s["status"] == "success"
    losses = [h["train_loss"] for h in s["history"]]
    assert losses[2] < losses[1] < losses[0]
    assert s["test_accuracy"] > 0.25  # chance is 0.1
    assert len(s["ranks"]) == (0 if name == "vanilla" else 1)
