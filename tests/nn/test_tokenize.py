import pytest
import torch

from xt_plugins.nn.tokenize import RegionGrid


def test_grid_geometry_for_odd_sizes():
    g = RegionGrid(1000, 700, 256)
    assert (g.rows, g.cols, g.num_regions) == (4, 3, 12)
    assert g.padded_size == (1024, 768)
    assert g.coords()[-1].tolist() == [3, 2]
    assert g.region_box(11) == (768, 512, 232, 188)
    frac = g.valid_fraction()
    assert frac[0] == 1.0
    assert frac[11] == pytest.approx(232 * 188 / 256**2)


def test_nest_unnest_round_trip_and_crop():
    x = torch.randn(2, 3, 100, 70)
    g = RegionGrid(100, 70, 32)
    regions = g.nest(x)
    assert regions.shape == (2 * 4 * 3, 3, 32, 32)
    # region (1, 2) of image 1 is the pixels [32:64, 64:70] then zero padding
    r = regions[12 + 1 * 3 + 2]
    assert torch.equal(r[:, :, :6], x[1, :, 32:64, 64:70])
    assert r[:, :, 6:].abs().sum() == 0
    back = g.unnest(regions, 2, crop_stride=1)
    assert torch.equal(back, x)
    pooled = torch.nn.functional.avg_pool2d(regions, 4)
    assert g.unnest(pooled, 2, crop_stride=4).shape == (2, 3, 25, 18)


def test_token_coords_are_global_positions():
    g = RegionGrid(64, 96, 32)  # 2 x 3 regions
    c = g.token_coords(2)
    assert c.shape == (6 * 4, 2)
    # region (1, 2) -> tokens at rows 2..3, cols 4..5
    assert c[5 * 4 :].tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]


def test_bad_sizes_and_shapes():
    with pytest.raises(ValueError, match="positive"):
        RegionGrid(0, 10, 4)
    with pytest.raises(ValueError, match="expected an image"):
        RegionGrid(10, 10, 4).nest(torch.zeros(1, 3, 10, 11))
