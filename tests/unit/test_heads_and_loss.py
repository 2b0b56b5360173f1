"""Fusion network and baselines behind one interface; InfoNCE against a naive oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fusion_model.losses import InfoNCELoss
from fusion_model.models.heads import HEADS, HeadSettings, QueryHead, head_class

B, LT, LI, DT, DI, D = 5, 7, 4, 12, 20, 16


def head(kind: str):
    return head_class(kind)(DT, DI, HeadSettings(D, heads=4))


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(B, LT, DT, generator=g)
    mask = torch.ones(B, LT, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, :] = False                       # product 3 has empty text
    image = torch.randn(B, LI, DI, generator=g)
    present = torch.tensor([True, True, False, True, True])  # product 2 has no photo
    return text, mask, image, present


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_every_head_gives_unit_vectors_with_gradients(kind):
    torch.manual_seed(0)
    head_ = head(kind)
    out = head_(*inputs())
    assert out.shape == (B, head_.out_dim) and torch.isfinite(out).all()
    assert head_.out_dim == HEADS[kind].output_dim(D) == HEADS[kind].query_spaces * D
    norms = out.norm(dim=-1)
    if kind == "late_fusion":
        assert head_.out_dim == 2 * D
    elif kind == "image_only":
        assert torch.allclose(norms[[0, 1, 3, 4]], torch.ones(4), atol=1e-5)
        assert norms[2] == 0  # no photo, nothing to embed
    else:
        assert torch.allclose(norms[[0, 1, 2, 4]], torch.ones(4), atol=1e-5)
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head_.parameters())


def test_fusion_without_photo_equals_the_text_only_embedding():
    torch.manual_seed(0)
    fusion = head("fusion").eval()
    text_only = head("text_only").eval()
    text_only.text_proj.load_state_dict(fusion.text_proj.state_dict())
    # make the gate and complement non-trivial, as after training
    for p in [*fusion.gate.parameters(), *fusion.complement.parameters()]:
        torch.nn.init.normal_(p)
    text, mask, image, present = inputs()
    fused = fusion(text, mask, image, present)
    expected = text_only(text, mask)
    assert torch.allclose(fused[2], expected[2], atol=1e-5)       # no photo -> text path
    assert not torch.allclose(fused[0], expected[0], atol=1e-3)   # photo -> fused


def test_fusion_uses_the_image_and_ignores_padding():
    torch.manual_seed(0)
    fusion = head("fusion").eval()
    for p in fusion.gate.parameters():
        torch.nn.init.normal_(p)
    text, mask, image, present = inputs()
    base = fusion(text, mask, image, present)
    changed_image = image.clone()
    changed_image[0] += 1.0
    assert not torch.allclose(fusion(text, mask, changed_image, present)[0], base[0])
    changed_pad = text.clone()
    changed_pad[1, 5] += 100.0               # a padded token of product 1
    assert torch.allclose(fusion(changed_pad, mask, image, present)[1], base[1], atol=1e-5)


def test_late_fusion_score_is_a_weighted_sum_of_modal_scores():
    torch.manual_seed(0)
    late = head("late_fusion")
    query_head = QueryHead(DT, D, query_spaces=2)
    text, mask, image, present = inputs()
    q = query_head(torch.randn(B, DT))
    p = late(text, mask, image, present)
    a = torch.sigmoid(late.mix)
    t = F.normalize(late.text_vector(text, mask), dim=-1)
    i = F.normalize(late.image_vector(image), dim=-1)
    expected = a * (q[:, :D] * t).sum(-1) + (1 - a) * (q[:, D:] * i).sum(-1)
    got = (q * p).sum(-1)
    assert torch.allclose(got[[0, 1, 3, 4]], expected[[0, 1, 3, 4]], atol=1e-5)
    assert torch.allclose(got[2], (q[2, :D] * t[2]).sum(), atol=1e-5)  # no photo: text only


def test_a_new_head_is_one_registered_class(tmp_path):
    """Registering a head makes it a valid config kind, a tower layout and a benchmark model."""
    from fusion_model.benchmark import all_models, core_models
    from fusion_model.checks import load_checked_config as load_config
    from fusion_model.models.heads import ProductHead, l2

    class MaxHead(ProductHead, name="test_max"):
        def forward(self, text_tokens, text_mask, image_tokens, image_present):
            text = self.text_vector(text_tokens, text_mask)
            return l2(torch.maximum(text, self.image_vector(image_tokens)))

    try:
        assert load_config("default", ["model.fusion=test_max"]).model.fusion == "test_max"
        assert "test_max" in core_models() and "test_max_no_ft" in all_models()
        out = head("test_max")(*inputs())
        assert out.shape == (B, D)
        with pytest.raises(ValueError, match="registered twice"):
            type("Again", (ProductHead,), {}, name="test_max")
    finally:
        HEADS.pop("test_max")
    with pytest.raises(Exception, match="choose one of text_only, image_only"):
        load_config("default", ["model.fusion=test_max"])


def naive_infonce(q, p, scale, known):
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        logits = [scale * float(q[i] @ p[j]) for j in range(p.shape[0])
                  if j == i or not known[i, j]]
        pos = scale * float(q[i] @ p[i])
        total += -pos + math.log(sum(math.exp(x) for x in logits))
    forward = total / b
    total = 0.0
    for j in range(b):
        logits = [scale * float(q[i] @ p[j]) for i in range(b) if i == j or not known[i, j]]
        total += -scale * float(q[j] @ p[j]) + math.log(sum(math.exp(x) for x in logits))
    return (forward + total / b) / 2


@pytest.mark.parametrize("seed", range(5))
def test_infonce_matches_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    p = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    known = torch.rand(4, 6, generator=g) < 0.3
    loss_fn = InfoNCELoss(temperature=0.1)
    assert float(loss_fn(q, p, known).detach()) == pytest.approx(naive_infonce(q, p, 10.0, known),
                                                        rel=1e-5)
    assert loss_fn.temperature == pytest.approx(0.1)


def test_temperature_is_learned():
    loss_fn = InfoNCELoss(temperature=0.5)
    q = F.normalize(torch.eye(4), dim=-1)
    loss_fn(q, q).backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad < 0


def test_fusion_starts_as_a_gated_weighted_sum_of_mean_pooled_modalities():
    """Zero-initialised update gates and region keys: at initialisation the fusion network
    is exactly the per-product gate over mean-pooled text and image."""
    torch.manual_seed(0)
    fusion = head_class("fusion")(DT, DI, HeadSettings(D, 4, 0.1, True, True)).eval()
    plain = head_class("fusion")(DT, DI, HeadSettings(D, 4, 0.1, False, False)).eval()
    plain.load_state_dict(fusion.state_dict(), strict=False)
    text, mask, image, present = inputs()
    assert torch.allclose(fusion(text, mask, image, present),
                          _gate_only(plain, text, mask, image, present), atol=1e-5)
    with torch.no_grad():
        fusion.update_gates.fill_(1.0)
        torch.nn.init.normal_(fusion.region_key.weight)
    assert not torch.allclose(fusion(text, mask, image, present)[0],
                              _gate_only(plain, text, mask, image, present)[0], atol=1e-3)


def test_fusion_with_only_its_mix_parameters_is_exactly_a_weighted_sum():
    """The mix phase's premise (train.stage2.mix_epochs): with its other parts at their
    zero start, the gated network with a gate bias of (log a, log(1 - a)) and the weighted
    sum with mix a over the same projections give the same product vectors, a missing photo
    included (empty text is where they differ: the network leaves it out of the mix)."""
    torch.manual_seed(0)
    fusion = head_class("fusion")(DT, DI, HeadSettings(D, 4, 0.1, True, True)).eval()
    weighted = head_class("weighted_sum")(DT, DI, HeadSettings(D)).eval()
    weighted.text_proj.load_state_dict(fusion.text_proj.state_dict())
    weighted.image_proj.load_state_dict(fusion.image_proj.state_dict())
    a = 0.7
    with torch.no_grad():
        weighted.mix.fill_(torch.logit(torch.tensor(a)))
        fusion.gate[-1].bias.copy_(torch.log(torch.tensor([a, 1 - a])))
    text, mask, image, present = inputs()
    has_text = mask.any(dim=1)
    got, want = fusion(text, mask, image, present), weighted(text, mask, image, present)
    assert torch.allclose(got[has_text], want[has_text], atol=1e-5)
    names = {id(p) for p in fusion.mix_parameters()}
    assert names == {id(p) for p in (*fusion.text_proj.parameters(),
                                     *fusion.image_proj.parameters(), fusion.gate[-1].bias)}


def _gate_only(fusion, text, mask, image, present):
    from fusion_model.models.heads import image_pool, l2
    from fusion_model.models.text import mean_pool

    t = l2(mean_pool(fusion.text_proj(text), mask))
    i = l2(image_pool(fusion.image_proj(image)))
    logits = fusion.gate(torch.cat([t, i, t * i, (t - i).abs()], dim=-1))
    has_text = mask.any(dim=1)
    logits = logits.masked_fill(torch.stack([~has_text & present, ~present], dim=-1),
                                float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return l2(weights[:, :1] * t + weights[:, 1:] * i)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_heads_that_weigh_the_modalities_report_each_products_photo_weight(kind):
    """The review page's "photo x%": the fusion gate's per-product share, the learned mix
    of the simple fusions; 0 without a photo, 1 without text; the vectors unchanged."""
    torch.manual_seed(0)
    head_ = head(kind).eval()
    if kind == "fusion":
        for p in head_.gate.parameters():  # a per-product gate, as after training
            torch.nn.init.normal_(p)
    text, mask, image, present = inputs()
    with torch.no_grad():
        vectors, weight = head_.with_photo_weight(text, mask, image, present)
    assert torch.allclose(vectors, head_(text, mask, image, present))
    if kind not in ("fusion", "weighted_sum", "late_fusion"):
        assert weight is None
        return
    assert weight.shape == (B,) and ((weight >= 0) & (weight <= 1)).all()
    assert weight[2] == 0  # no photo
    if kind == "fusion":
        assert weight[3] == 1  # no text: the photo alone
        assert len({round(float(w), 4) for w in weight[[0, 1, 4]]}) > 1  # per product
    else:
        expected = 1 - torch.sigmoid(head_.mix)
        assert torch.allclose(weight[[0, 1, 3, 4]], expected.expand(4))
