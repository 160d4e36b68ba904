"""XTNet (MONAI network conventions) and safe checkpoints that rebuild it."""

from __future__ import annotations

import json

import pytest
import torch

import xt_plugins
from xt_plugins.monai import CheckpointError, XTNet, load_checkpoint, save_checkpoint

from .conftest import REGION, TINY_XTNET, tiny_xtnet


def test_xtnet_follows_monai_conventions_and_passes_kwargs():
    net = tiny_xtnet(out_channels=3, drop_rate=0.1, region_chunk=5, grad_ratio=0.5)
    assert isinstance(net, xt_plugins.XTModel)
    assert net.num_classes == 3 and net.in_chans == 3 and net.region_size == REGION
    assert net.region_chunk == 5 and net.grad_ratio == 0.5  # XTModel options
    assert net.region_encoder.channels == [24, 48, 96, 192]  # timm options (dims)
    net.eval()
    out = net(torch.rand(2, 3, 100, 150))  # 2 x 3 regions, padded
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert json.loads(json.dumps(net.config))["dims"] == [24, 48, 96, 192]
    with pytest.raises(ValueError, match="spatial_dims=2.*got spatial_dims=3"):
        XTNet(spatial_dims=3, **TINY_XTNET)
    gray = tiny_xtnet(in_channels=1)
    assert gray.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 2)


def test_xtnet_state_dict_matches_create_model():
    net = tiny_xtnet()
    kw = {k: v for k, v in TINY_XTNET.items() if k not in ("region_encoder", "context")}
    other = xt_plugins.create_model("convnext_tiny", "mamba", num_classes=2, **kw)
    assert net.state_dict().keys() == other.state_dict().keys()
    other.load_state_dict(net.state_dict())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip_rebuilds_the_network(tmp_path, suffix):
    net = tiny_xtnet(seed=3).eval()
    path = save_checkpoint(net, tmp_path / f"model{suffix}")
    if suffix == ".pt":  # plain types only: loads without unpickling code
        raw = torch.load(path, weights_only=True)
        assert set(raw) == {"model", "config"} and raw["config"] == net.config
    back = load_checkpoint(path).eval()
    assert isinstance(back, XTNet) and back.config == net.config
    x = torch.rand(1, 3, 128, 96)
    torch.testing.assert_close(back(x), net(x))
    into = tiny_xtnet(seed=9)
    load_checkpoint(path, into)
    torch.testing.assert_close(into.eval()(x), net(x))
    with pytest.raises(CheckpointError, match="out_channels: checkpoint 2 != network 4"):
        load_checkpoint(path, tiny_xtnet(out_channels=4))
    # memory options are not part of the architecture: inference may chunk differently
    chunked = tiny_xtnet(seed=9, region_chunk=2, checkpoint_context=True)
    load_checkpoint(path, chunked)
    torch.testing.assert_close(chunked.eval()(x), net(x))


def test_checkpoint_refuses_pickles_and_needs_a_config(tmp_path):
    net = tiny_xtnet()
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": net}, pickled)  # a whole module: needs unpickling
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(pickled)
    bare = tmp_path / "monai.pt"  # what a CheckpointSaver with save_dict={"model": net} writes
    torch.save({"model": net.state_dict()}, bare)
    with pytest.raises(CheckpointError, match="no network config"):
        load_checkpoint(bare)
    assert load_checkpoint(bare, tiny_xtnet(seed=5)) is not None
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
