"""``lowrank-integrators train --backend torch``: a converted model trains from the CLI."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")

from lowrank_integrators.cli import main  # noqa: E402
from lowrank_integrators.torch import LowRankLinear, TuckerConv2d, convert, lenet5  # noqa: E402
from lowrank_integrators.torch.command import count_parameters  # noqa: E402

SMALL = [
    "--backend", "torch", "--dataset", "digits", "--arch", "64-24-16-10", "--rank", "6",
    "--lr", "0.5", "--batch-size", "32", "--n-train", "256", "--n-test", "128", "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize("integrator", ["augmented-bug", "dense"])
def test_train_backend_torch_prints_and_writes_the_summary(tmp_path, capsys, integrator):
    out, folder = tmp_path / "out.json", tmp_path / "run"
    args = ["--epochs", "2", "--json", str(out), "--out", str(folder)]
    code = main(["train", *SMALL, "--integrator", integrator, *args])
    assert code == 0
    text = capsys.readouterr().out
    for needle in ("test accuracy", "ranks per low-rank layer", "compression", "time per epoch"):
        assert needle in text
    s = json.loads(out.read_text())
    assert len(s["history"]) == 2
    assert s["history"][-1]["loss"] < s["history"][0]["loss"]
    assert 0.0 <= s["test_accuracy"] <= 1.0
    if integrator == "dense":
        assert s["ranks"] == {}
        assert s["compression_evaluation"] == 0.0
    else:
        assert set(s["ranks"]) == {"fc1", "fc2"}
        assert s["parameters"]["evaluation"] < s["parameters"]["dense"]
    assert json.loads((folder / "summary.json").read_text())["ranks"] == s["ranks"]
    assert (folder / "history.csv").read_text().count("\n") == 3  # header and two epochs
    state = torch.load(folder / "model.pt")
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_on_cuda_trains_and_saves_a_model_that_loads_on_the_cpu(tmp_path):
    out, folder = tmp_path / "out.json", tmp_path / "run"
    args = ["--epochs", "2", "--json", str(out), "--out", str(folder), "--device", "cuda"]
    assert main(["train", *SMALL, "--integrator", "augmented-bug", *args]) == 0
    s = json.loads(out.read_text())
    assert s["history"][-1]["loss"] < s["history"][0]["loss"]
    assert set(s["ranks"]) == {"fc1", "fc2"}
    saved = torch.load(folder / "model.pt")
    assert {v.device.type for v in saved.values()} == {"cuda"}  # saved as trained, like torch
    on_cpu = torch.load(folder / "model.pt", map_location="cpu")
    assert all(torch.equal(on_cpu[k], saved[k].cpu()) for k in saved)


def test_cuda_without_a_device_and_unknown_options_are_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if not torch.cuda.is_available():
        assert main(["train", *SMALL, "--device", "cuda", "--epochs", "1"]) == 2
        assert "CUDA" in capsys.readouterr().err
    assert main(["train", *SMALL, "--model", "lenet5", "--epochs", "1"]) == 2
    assert "28 x 28" in capsys.readouterr().err


def test_parameter_counts_follow_the_ranks():
    model = convert(lenet5(), 4, conv="tucker", exclude=("fc2",))
    counts = count_parameters(model)
    dense = sum(p.numel() for p in lenet5().parameters())
    assert counts["dense"] == dense
    fc1 = model.fc1
    assert isinstance(fc1, LowRankLinear)
    conv2 = model.conv2
    assert isinstance(conv2, TuckerConv2d)
    expected = dense - 800 * 500 + 4 * (800 + 500)
    expected -= 20 * 5 * 5 * 1 - (4 * 1 * 4 * 4 + 20 * 4 + 1 * 1 + 5 * 4 + 5 * 4)  # conv1
    expected -= 50 * 20 * 25 - (4**4 + 50 * 4 + 20 * 4 + 5 * 4 + 5 * 4)  # conv2
    assert counts["evaluation"] == expected
