"""MIL heads: shapes, masks, one attention branch per task, CLAM's instance loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models import mil
from models.errors import TrainingDataError
from models.mil import (
    ARCHITECTURES,
    CLAMSB,
    TaskSpec,
    TransMIL,
    build_model,
    known_heads,
    masked_softmax,
    register_head,
)
from tests.tiny_heads import ScoredPool

TASKS = (
    TaskSpec("subtype", "classification", ["a", "b", "c"]),
    TaskSpec("til_fraction", "regression"),
)
DIM = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest, and reproducibly, on one thread on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, DIM, TASKS, hidden=32, dropout=0.0, **kwargs).eval()


def _padded(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(b) for b in bags)
    x = torch.zeros(len(bags), n, DIM)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = b
        mask[i, : len(b)] = True
    return x, mask


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_outputs_and_attention_shapes_per_task(arch):
    x = torch.randn(3, 11, DIM)
    out = _model(arch)(x)
    assert out.outputs["subtype"].shape == (3, 3)
    assert out.outputs["til_fraction"].shape == (3,)
    for task in ("subtype", "til_fraction"):
        att = out.attention[task]
        assert att.shape == (3, 11)
        assert torch.all(att >= 0)
        torch.testing.assert_close(att.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padded_batch_gives_zero_attention_on_padding_and_sums_to_one(arch):
    torch.manual_seed(1)
    bags = [torch.randn(n, DIM) for n in (5, 9, 2)]
    x, mask = _padded(bags)
    x[~mask] = 100.0  # padding content must not matter
    out = _model(arch)(x, mask)
    for att in out.attention.values():
        assert torch.all(att[~mask] == 0)
        torch.testing.assert_close(att.sum(dim=1), torch.ones(3))
    for value in out.outputs.values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("abmil", {}), ("clam_sb", {}), ("meanpool", {}), ("transmil", {"ppeg": False})],
)
def test_padded_batch_matches_bags_one_by_one(arch, kwargs):
    torch.manual_seed(2)
    bags = [torch.randn(n, DIM) for n in (7, 3, 12)]
    model = _model(arch, **kwargs)
    batched = model(*_padded(bags))
    for i, bag in enumerate(bags):
        single = model(bag.unsqueeze(0))
        for task in ("subtype", "til_fraction"):
            torch.testing.assert_close(batched.outputs[task][i], single.outputs[task][0])
            torch.testing.assert_close(
                batched.attention[task][i, : len(bag)], single.attention[task][0]
            )


def test_abmil_is_permutation_invariant():
    torch.manual_seed(3)
    bag = torch.randn(1, 20, DIM)
    perm = torch.randperm(20)
    model = _model("abmil")
    a, b = model(bag), model(bag[:, perm])
    torch.testing.assert_close(a.outputs["subtype"], b.outputs["subtype"])
    torch.testing.assert_close(a.attention["subtype"][:, perm], b.attention["subtype"])


def test_meanpool_attention_is_uniform_over_real_tiles():
    x, mask = _padded([torch.randn(4, DIM), torch.randn(8, DIM)])
    out = _model("meanpool")(x, mask)
    assert out.attention["subtype"][0, :4].tolist() == [0.25] * 4
    assert out.attention["subtype"][0, 4:].tolist() == [0.0] * 4
    assert out.attention["til_fraction"][1].tolist() == [0.125] * 8


@pytest.mark.parametrize("arch", ["abmil", "clam_sb"])
def test_each_task_has_its_own_attention_branch(arch):
    """A loss on one task moves only that task's attention branch and head."""
    model = _model(arch)
    model.train()
    out = model(torch.randn(1, 15, DIM))
    assert not torch.allclose(out.attention["subtype"], out.attention["til_fraction"])
    out.outputs["til_fraction"].sum().backward()
    grad = model.attention.weight.grad
    assert grad[0].abs().sum() == 0  # subtype's branch untouched by the regression loss
    assert grad[1].abs().sum() > 0
    assert model.heads[0].weight.grad is None


def test_transmil_has_one_class_token_per_task():
    model = _model("transmil")
    assert isinstance(model, TransMIL)
    assert model.class_tokens.shape == (1, 2, 32)
    out = model(torch.randn(2, 30, DIM))
    assert not torch.allclose(out.attention["subtype"], out.attention["til_fraction"])
    torch.testing.assert_close(out.attention["subtype"].sum(1), torch.ones(2))


def test_clam_instance_loss_uses_known_class_labels_only():
    model = _model("clam_sb", k_sample=4)
    assert isinstance(model, CLAMSB)
    x = torch.randn(2, 12, DIM)
    assert model(x).extra_loss is None
    unknown = {"subtype": torch.tensor([-1, -1])}
    assert model(x, targets=unknown).extra_loss is None
    loss = model(x, targets={"subtype": torch.tensor([2, -1])}).extra_loss
    # Untrained 2-way instance classifiers give a cross-entropy near ln 2, times inst_weight.
    assert loss is not None
    assert 0.3 * 0.5 < float(loss.detach()) < 0.3 * 1.0
    loss.backward()
    assert model.instance_classifiers[0].weight.grad.abs().sum() > 0


def test_clam_instance_loss_pseudo_labels_top_and_bottom_attended_tiles():
    """With the attention forced onto tiles 0-1, their instance logits decide the loss."""
    model = _model("clam_sb", k_sample=2, subtyping=False)
    with torch.no_grad():
        model.attention.weight.zero_()
        model.attention.bias.zero_()
    h = torch.zeros(1, 6, 32)
    h[0, :2, 0] = 1.0  # the top tiles carry feature 0
    scores = torch.tensor([[5.0, 4.0, 0.0, 0.0, -4.0, -5.0]]).unsqueeze(1).expand(1, 2, 6)
    classifier = model.instance_classifiers[0]
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
        # class 1's classifier: logit "positive" = 10 * feature 0 -> confident on tiles 0-1
        classifier.weight[3, 0] = 10.0
    loss = model.instance_loss(h, scores, None, {"subtype": torch.tensor([1])})
    # top tiles: CE(log-softmax [0, 10], 1) ~ 4.5e-5; bottom tiles: CE([0, 0], 0) = ln 2
    expected = 0.3 * (2 * 4.54e-5 + 2 * 0.6931) / 4
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-3)


def test_clam_skips_bags_too_small_for_k():
    model = _model("clam_sb", k_sample=8)
    out = model(torch.randn(1, 1, DIM), targets={"subtype": torch.tensor([0])})
    assert out.extra_loss is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_empty_bag_gives_finite_outputs(arch):
    out = _model(arch)(torch.zeros(1, 0, DIM))
    assert torch.isfinite(out.outputs["subtype"]).all()
    assert out.attention["subtype"].shape == (1, 0)


def test_masked_softmax_of_fully_masked_bag_is_zero():
    att = masked_softmax(torch.randn(2, 3, 4), torch.tensor([[True] * 4, [False] * 4]))
    assert torch.all(att[1] == 0)
    torch.testing.assert_close(att[0].sum(-1), torch.ones(3))


def test_wrong_feature_dim_is_refused():
    with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
        _model("abmil")(torch.randn(1, 5, 8))


def test_bad_names_are_refused():
    with pytest.raises(TrainingDataError, match="abmil, clam_sb, transmil, meanpool"):
        build_model("attention", DIM, TASKS)
    with pytest.raises(TrainingDataError, match="at least 2 classes"):
        TaskSpec("x", "classification", ["only"])
    with pytest.raises(TrainingDataError, match="unique"):
        build_model("abmil", DIM, [TASKS[1], TASKS[1]])


@pytest.fixture
def head_registry(monkeypatch):
    """Heads registered in a test stay in that test."""
    monkeypatch.setattr(mil, "_HEADS", dict(mil._HEADS))


def test_registered_head_is_listed_and_built_with_its_kwargs(head_registry):
    assert known_heads() == list(ARCHITECTURES) == ["abmil", "clam_sb", "transmil", "meanpool"]
    models.register_head("scored", ScoredPool, description="one score per tile")
    assert models.known_heads() == [*ARCHITECTURES, "scored"]
    torch.manual_seed(0)
    model = models.build_model("scored", DIM, TASKS, hidden=8, scale=2.0)
    assert isinstance(model, ScoredPool) and model.scale == 2.0
    x, mask = _padded([torch.randn(5, DIM), torch.randn(3, DIM)])
    out = model.eval()(x, mask)
    assert out.outputs["subtype"].shape == (2, 3) and out.outputs["til_fraction"].shape == (2,)
    assert torch.allclose(out.attention["subtype"].sum(1), torch.ones(2))
    assert out.attention["subtype"][1, 3:].abs().max() == 0  # padding gets no attention
    with pytest.raises(TrainingDataError, match="scored: one score per tile"):
        build_model("nope", DIM, TASKS)


def test_head_registration_is_checked(head_registry):
    with pytest.raises(TrainingDataError, match="built-in"):
        register_head("abmil", ScoredPool)
    with pytest.raises(TrainingDataError, match="callable"):
        register_head("x", "ScoredPool")
    register_head("linear", lambda in_dim, tasks, **kw: nn.Linear(in_dim, 1))
    with pytest.raises(TrainingDataError, match="returned a Linear, not a models.MILModel"):
        build_model("linear", DIM, TASKS)
    with pytest.raises(TrainingDataError, match="models.register_head"):
        build_model("scored", DIM, TASKS)


def test_reprs_are_one_line():
    out = _model("abmil")(torch.randn(1, 7, DIM))
    assert repr(out) == "MILOutput(subtype (1, 3), til_fraction (1,))"
