"""Training data: labels are class indices, counts are positive; anything else is an error."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_integrators.training import MLP
from lowrank_integrators.training.data import Dataset


def small_dataset(y_train=None):
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 1, 0, 2]) if y_train is None else np.asarray(y_train)
    return Dataset("toy", rng.random((6, 4)), y, rng.random((3, 4)), np.array([2, 0, 1]))


def test_a_negative_label_is_refused_by_the_dataset():
    with pytest.raises(ValueError, match=r"y_train holds the label -1"):
        small_dataset([0, 1, 2, -1, 0, 2])


def test_non_integer_labels_are_refused():
    with pytest.raises(TypeError, match="y_train must hold integer labels"):
        small_dataset([0.0, 1.0, 2.0, 1.0, 0.0, 2.0])


@pytest.mark.parametrize("n", [-5, 0, 7])
def test_a_count_outside_1_to_available_is_refused(n):
    with pytest.raises(ValueError, match=rf"n_train must be between 1 and the 6 examples.*got {n}"):
        small_dataset().subset(n_train=n)
    with pytest.raises(ValueError, match="n_test"):
        small_dataset().subset(n_test=n if n != 7 else 4)


def test_a_count_within_range_takes_the_first_examples():
    ds = small_dataset()
    sub = ds.subset(np.int64(4), 2)
    np.testing.assert_array_equal(sub.y_train, ds.y_train[:4])
    assert sub.X_test.shape == (2, 4)


@pytest.mark.parametrize("label", [-1, 3])
def test_a_label_outside_the_network_outputs_is_an_error_not_a_class(rng, label):
    net = MLP.from_arch("4-5-3", rank=2)
    weights, params = net.init(rng)
    X, y = rng.random((4, 4)), np.array([0, 1, 2, label])
    with pytest.raises(ValueError, match=r"labels y must be class indices in \[0, 3\)"):
        net.gradient(weights, params, (X, y))
    with pytest.raises(ValueError, match="labels y"):
        net.loss_and_accuracy(weights, params, X, y)


@pytest.mark.parametrize("flag", ["--n-train", "--n-test"])
def test_the_command_line_refuses_a_negative_count_with_exit_status_2(capsys, flag):
    pytest.importorskip("sklearn")
    from lowrank_integrators.cli import main

    assert main(["train", flag, "-5", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{flag[2:].replace('-', '_')} must be" in err and "-5" in err
