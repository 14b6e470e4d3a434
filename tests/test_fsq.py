import itertools

import pytest
import torch

from reftok_deploy.model.fsq import FSQ


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 5, 5, 5), (2, 3), (16,)])
def test_every_id_round_trips_exactly(levels):
    fsq = FSQ(levels)
    ids = torch.arange(fsq.codebook_size, dtype=torch.int32).reshape(1, -1, 1)
    codes = fsq.ids_to_codes(ids)
    assert codes.shape == (1, len(levels), fsq.codebook_size, 1)
    assert torch.equal(fsq.codes_to_ids(codes), ids)
    assert codes.min() >= -1 and codes.max() <= 1
    # Every code vector is distinct: the packing is a bijection.
    assert len({tuple(v) for v in codes[0, :, :, 0].T.tolist()}) == fsq.codebook_size


def test_quantize_lands_on_the_grid_and_ids_are_int32():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(3, 4, 5, 6) * 4
    codes, ids = fsq(z)
    assert ids.dtype == torch.int32 and ids.shape == (3, 5, 6)
    assert 0 <= int(ids.min()) and int(ids.max()) < fsq.codebook_size
    scaled = codes * torch.tensor([4.0, 2, 2, 2]).view(1, 4, 1, 1)
    assert torch.equal(scaled, scaled.round())
    assert torch.allclose(fsq.ids_to_codes(ids), codes)


def test_every_level_is_reachable():
    fsq = FSQ((8, 5))
    z = torch.linspace(-20, 20, 2001).view(1, 1, -1, 1).repeat(1, 2, 1, 1)
    _, ids = fsq(z)
    digits = {(i % 8, (i // 8) % 5) for i in ids.flatten().tolist()}
    assert {d[0] for d in digits} == set(range(8)) and {d[1] for d in digits} == set(range(5))


def test_straight_through_gradient_flows():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    fsq.quantize(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("levels", [(), (1, 5), (2**13, 2**12)])
def test_bad_levels_are_refused(levels):
    with pytest.raises(ValueError):
        FSQ(levels)


def test_buffers_are_not_saved_with_weights():
    assert FSQ((8, 5, 5, 5)).state_dict() == {}
    assert list(itertools.chain(FSQ((3,)).parameters())) == []
