import itertools

import pytest
import torch
import torch.nn.functional as F

from pml_divide_conquer import SubspaceMaskedEmbedder


def test_forward_returns_full_embedding_of_wrapped_embedder():
    lin = torch.nn.Linear(5, 8)
    emb = SubspaceMaskedEmbedder(8, 4, embedder=lin)
    x = torch.randn(3, 5)
    assert torch.equal(emb(x), lin(x))
    with pytest.raises(ValueError, match="embedding_size=6"):
        SubspaceMaskedEmbedder(6, 2)(x)


def test_fixed_chunks_are_contiguous_normalised_and_nest_when_K_doubles():
    emb = SubspaceMaskedEmbedder(8, 4)
    e = torch.randn(5, 8)
    for k in range(4):
        assert torch.allclose(emb.subspace(e, k, 4), F.normalize(e[:, 2 * k : 2 * k + 2], dim=1))
    assert emb.subspace_size(2) == 4 and emb.subspace_size(4) == 2

    def dims(k, K):  # which embedding dims learner k reads: probe with one-hot embeddings
        probes = emb.subspace(torch.eye(8), k, K)
        return set(torch.nonzero(probes.abs().sum(1)).flatten().tolist())

    for c in range(2):  # the children 2c and 2c+1 at K=4 split chunk c of K=2 in two halves, in order
        assert dims(c, 2) == dims(2 * c, 4) | dims(2 * c + 1, 4)
        assert max(dims(2 * c, 4)) < min(dims(2 * c + 1, 4))
    assert set().union(*(dims(k, 4) for k in range(4))) == set(range(8))


def test_fixed_mode_needs_divisible_size():
    with pytest.raises(ValueError, match="not divisible by num_learners=3"):
        SubspaceMaskedEmbedder(8, 3)


def test_learned_masks_start_at_one_and_apply_relu():
    emb = SubspaceMaskedEmbedder(6, 2, mode="learned")
    assert torch.equal(emb.masks, torch.ones(2, 6))
    e = torch.randn(4, 6)
    assert torch.allclose(emb.subspace(e, 1, 2), F.normalize(e, dim=1))
    with torch.no_grad():
        emb.masks[1, :3] = -1.0
    expected = F.normalize(torch.cat([torch.zeros(4, 3), e[:, 3:]], 1), dim=1)
    assert torch.allclose(emb.subspace(e, 1, 2), expected)


def test_orthogonality_is_mean_pairwise_cosine_of_relu_masks():
    emb = SubspaceMaskedEmbedder(7, 4, mode="learned")
    with torch.no_grad():
        emb.masks.copy_(torch.randn(4, 7))
    r = F.relu(emb.masks)
    for k in (2, 3, 4):
        pairs = [(i, j) for i, j in itertools.permutations(range(k), 2)]
        ref = sum(F.cosine_similarity(r[i], r[j], dim=0) for i, j in pairs) / len(pairs)
        assert torch.allclose(emb.orthogonality_loss(k), ref, atol=1e-6)
    assert float(emb.orthogonality_loss(1)) == 0.0
    emb.orthogonality_loss(4).backward()
    assert emb.masks.grad is not None


def test_split_copies_each_mask_into_both_children():
    emb = SubspaceMaskedEmbedder(3, 8, mode="learned")
    with torch.no_grad():
        emb.masks.copy_(torch.arange(24.0).view(8, 3))
    before = emb.masks.detach().clone()
    emb.split_masks(3)
    for c in range(3):
        assert torch.equal(emb.masks[2 * c], before[c]) and torch.equal(emb.masks[2 * c + 1], before[c])
    assert torch.equal(emb.masks[6:], before[6:])


def test_parameter_groups_give_masks_their_own_lr():
    emb = SubspaceMaskedEmbedder(4, 2, mode="learned", embedder=torch.nn.Linear(3, 4))
    groups = emb.parameter_groups(lr=1e-3, weight_decay=1e-4, mask_lr_multiplier=100, mask_weight_decay=0.0)
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(0.1)
    assert groups[1]["params"] == [emb.masks] and groups[1]["weight_decay"] == 0.0
    torch.optim.Adam(groups)
    fixed = SubspaceMaskedEmbedder(4, 2, embedder=torch.nn.Linear(3, 4)).parameter_groups(lr=1e-3)
    assert len(fixed) == 1
