"""The resume state file: exact round trip, atomic writes, clear refusals."""
import os

import pytest
import torch

from infusion.format import write_safetensors
from infusion.training.state import ResumeError, TrainingState, check_resumable, load_state, save_state


def state():
    g = torch.Generator().manual_seed(0)
    return TrainingState(
        step=7, vectors={"value.input.1.0": torch.randn(8, generator=g), "value.middle.0.0": torch.randn(8, generator=g)},
        optimizer={0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(8, generator=g), "exp_avg_sq": torch.rand(8, generator=g)},
                   1: {"step": torch.tensor(7.0), "exp_avg": torch.randn(8, generator=g), "exp_avg_sq": torch.rand(8, generator=g)}},
        generator=g.get_state(), order=[torch.tensor([2, 0, 1]), torch.tensor([1, 0])], cursor=[1, 2], losses=[0.1 + 1e-17, 1 / 3, 2e-300],
        run={"word": "dog", "settings": {"seed": 3, "learning_rate": 0.01}}, scaler={"scale": 65536.0, "_growth_tracker": 3})


def test_round_trip_is_exact(tmp_path):
    a = state()
    b = load_state(save_state(a, str(tmp_path / "x.resume")))
    assert b.step == 7 and b.cursor == [1, 2] and b.losses == a.losses and b.run == a.run and b.scaler == a.scaler
    assert list(b.vectors) == list(a.vectors) and all(torch.equal(a.vectors[k], b.vectors[k]) for k in a.vectors)
    assert all(torch.equal(a.optimizer[i][k], b.optimizer[i][k]) for i in a.optimizer for k in a.optimizer[i])
    assert torch.equal(a.generator, b.generator) and all(torch.equal(x, y) for x, y in zip(a.order, b.order))
    assert len(b.order) == 2


def test_same_state_same_bytes_and_no_temporary_files(tmp_path):
    one, two = save_state(state(), str(tmp_path / "a.resume")), save_state(state(), str(tmp_path / "b.resume"))
    assert open(one, "rb").read() == open(two, "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["a.resume", "b.resume"]


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(ResumeError, match="no resume state"):
        load_state(str(tmp_path / "missing.resume"))
    (tmp_path / "junk.resume").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ResumeError, match="not a readable resume state"):
        load_state(str(tmp_path / "junk.resume"))
    write_safetensors({"x": torch.zeros(1)}, str(tmp_path / "other.resume"), {"format": "infusion"})
    with pytest.raises(ResumeError, match="not an Infusion resume state"):
        load_state(str(tmp_path / "other.resume"))
    s = state()
    check_resumable(s, {"word": "dog", "settings": {"seed": 3, "learning_rate": 0.01}})
    with pytest.raises(ResumeError, match="word: saved 'dog', now 'cat'"):
        check_resumable(s, {"word": "cat", "settings": {"seed": 3, "learning_rate": 0.01}})
