"""The multi-positive symmetric InfoNCE against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from faclip.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, contrastive_loss, positive_targets

E = math.e


def test_hand_computed_with_a_repeated_dish():
    # Pairs 0 and 1 are one dish: each is a positive for the other, in both directions.
    image_features = torch.eye(3)
    text_features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    food_ids = torch.tensor([7, 7, 3])
    # logit_scale 0 -> scale 1. Targets (both directions): [.5,.5,0], [.5,.5,0], [0,0,1].
    # image->text logits [1,0,0], [0,0,0], [0,1,1]:
    #   log(e+2) - 1/2, log(3), log(2e+1) - 1
    # text->image logits [1,0,0], [0,0,1], [0,0,1]:
    #   log(e+2) - 1/2, log(e+2), log(e+2) - 1
    per_image = (math.log(E + 2) - 0.5 + math.log(3) + math.log(2 * E + 1) - 1) / 3
    per_text = (math.log(E + 2) - 0.5 + math.log(E + 2) + math.log(E + 2) - 1) / 3
    expected = (per_image + per_text) / 2
    loss = contrastive_loss(image_features, text_features, food_ids, torch.tensor(0.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Same-dish pairs as negatives (grouping by image, as the original project did) is another loss:
    # row 0 then wants only its diagonal (1/2 lower in each direction), row 1 is unchanged.
    per_pair = contrastive_loss(image_features, text_features, torch.tensor([0, 1, 2]), torch.tensor(0.0))
    assert per_pair.item() == pytest.approx(expected - (0.5 + 0.5) / 6, rel=1e-6)
    # A logit_scale of ln 2 doubles every logit.
    doubled = contrastive_loss(image_features, 2 * text_features, food_ids, torch.tensor(0.0))
    assert contrastive_loss(image_features, text_features, food_ids, torch.tensor(math.log(2))).item() == \
        pytest.approx(doubled.item(), rel=1e-6)


def test_targets_spread_uniformly_over_same_dish_pairs():
    targets = positive_targets(torch.tensor([1, 2, 1, 1]))
    expected = torch.tensor([[1 / 3, 0, 1 / 3, 1 / 3], [0, 1, 0, 0], [1 / 3, 0, 1 / 3, 1 / 3], [1 / 3, 0, 1 / 3, 1 / 3]])
    torch.testing.assert_close(targets, expected)


def test_distinct_dishes_reduce_to_the_clip_loss():
    torch.manual_seed(0)
    image_features = F.normalize(torch.randn(5, 8), dim=-1)
    text_features = F.normalize(torch.randn(5, 8), dim=-1)
    logit_scale = torch.tensor(LOGIT_SCALE_INIT)
    logits = logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(5)
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss = contrastive_loss(image_features, text_features, torch.tensor([4, 0, 3, 1, 2]), logit_scale)
    torch.testing.assert_close(loss, clip)


def test_gradient_reaches_text_features_and_logit_scale():
    torch.manual_seed(0)
    text_features = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    logit_scale = torch.tensor(LOGIT_SCALE_INIT, requires_grad=True)
    image_features = F.normalize(torch.randn(4, 8), dim=-1)
    contrastive_loss(image_features, text_features, torch.tensor([0, 0, 1, 2]), logit_scale).backward()
    assert text_features.grad.abs().sum() > 0 and logit_scale.grad.abs() > 0


def test_temperature_constants():
    assert math.exp(LOGIT_SCALE_INIT) == pytest.approx(1 / 0.07)
    assert math.exp(LOGIT_SCALE_MAX) == pytest.approx(100)


def test_train_maps_each_positives_value_to_its_groups():
    from faclip.train import TrainData, group_ids

    # Four pairs: photo A of dish 0 with two passages, photo B of dish 0, photo C of dish 1.
    data = TrainData(passage_tokens=[], passage_idx=torch.tensor([0, 1, 0, 2]), image_emb=torch.zeros(4, 2),
                     food_idx=torch.tensor([0, 0, 0, 1]), image_idx=torch.tensor([0, 0, 1, 2]))
    same = {p: positive_targets(group_ids(data, p)) > 0 for p in ("dish", "image", "pair")}
    assert same["dish"][0].tolist() == [True, True, True, False]  # both photos of dish 0
    assert same["image"][0].tolist() == [True, True, False, False]  # photo A's two pairs, not photo B
    assert same["pair"].equal(torch.eye(4, dtype=torch.bool))  # plain CLIP: the diagonal


def test_image_grouping_pushes_two_photos_of_a_dish_apart():
    # Two photos of one dish, one passage each; a text encoder that put both passages in between.
    image_features = F.normalize(torch.tensor([[1.0, 0.2], [1.0, -0.2]]), dim=-1)
    text_features = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=-1)
    by_dish = contrastive_loss(image_features, text_features, torch.tensor([0, 0]), torch.tensor(3.0))
    by_image = contrastive_loss(image_features, text_features, torch.tensor([0, 1]), torch.tensor(3.0))
    # Same dish: the targets are uniform over both, and equal logits meet them: loss = log 2 exactly.
    assert by_dish.item() == pytest.approx(math.log(2), rel=1e-6)
    # By image the other photo is a negative with the same logit: still log 2 here, but its gradient
    # pushes passage 0 towards photo 0 and away from photo 1, while by dish there is nothing to push.
    assert by_image.item() == pytest.approx(math.log(2), rel=1e-6)
    grads = {}
    for name, groups in (("dish", [0, 0]), ("image", [0, 1])):
        text = text_features.clone().requires_grad_()
        contrastive_loss(image_features, text, torch.tensor(groups), torch.tensor(3.0)).backward()
        grads[name] = text.grad
    assert grads["dish"].abs().max() < 1e-6 and grads["image"].abs().max() > 0.1


def test_with_frozen_image_vectors_grouping_by_image_is_plain_clip():
    # Pairs 0 and 1 share photo A (one vector, as the frozen cached embeddings give), with two passages.
    # Their logits rows are equal, so a target split over both costs what one target each costs, in both
    # directions: `positives: image` trains exactly as `pair` does here, and unlike `dish`.
    torch.manual_seed(0)
    image_features = F.normalize(torch.randn(3, 8), dim=-1)[[0, 0, 1, 2]]  # photos A, A, B, C
    text_features = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    losses, grads = {}, {}
    for name, groups in (("image", [0, 0, 1, 2]), ("pair", [0, 1, 2, 3]), ("dish", [0, 0, 0, 1])):
        loss = contrastive_loss(image_features, text_features, torch.tensor(groups), torch.tensor(1.0))
        losses[name], (grads[name],) = loss.item(), torch.autograd.grad(loss, text_features)
    assert losses["image"] == pytest.approx(losses["pair"], rel=1e-6)
    torch.testing.assert_close(grads["image"], grads["pair"])
    assert abs(losses["dish"] - losses["pair"]) > 1e-3
