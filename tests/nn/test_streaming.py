import numpy as np
import pytest
import torch

from xt_plugins.infer import cell_counts, stream_forward, stream_predict

from ..conftest import tiny_model

CONTEXTS = ["none", "txl", "hyper", "mamba"]


def _model(context, **kw):
    kw.setdefault("num_classes", 3)
    return tiny_model("convnext_tiny", context, **kw).eval()


@pytest.mark.parametrize("pool", [None, 1])
@pytest.mark.parametrize("context", CONTEXTS)
def test_stream_predict_equals_model(context, pool, tmp_path):
    # context_chunk=8 makes Mamba run its chunked, state-carrying path
    model = _model(context, context_pool=pool)
    x = torch.randn(3, 200, 330)  # 4 x 6 regions of 64 px, ragged borders
    with torch.no_grad():
        ref = model(x[None])[0]
    res = stream_predict(
        model, x.numpy(), region_batch=5, out=tmp_path / "o.zarr", progress=False, context_chunk=8
    )
    assert torch.allclose(res.logits, ref, atol=1e-4), (res.logits, ref)
    assert res.region_map.shape == (3, 4, 6)
    probs = np.asarray(res.region_map[:])
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    # per-region probabilities = head on each region's fused last-stage tokens
    with torch.no_grad():
        fused = model.forward_intermediates(x[None], intermediates_only=True)[-1][0]  # (C, 7, 11)
        w = torch.ones(1, 1, *fused.shape[-2:])
        w[..., :2, :2] = 1
        region00 = model.forward_head(fused[None, :, :2, :2])
        region_last = model.forward_head(fused[None, :, 6:, 10:])
    assert np.allclose(probs[:, 0, 0], torch.softmax(region00, -1)[0].numpy(), atol=1e-4)
    assert np.allclose(probs[:, 3, 5], torch.softmax(region_last, -1)[0].numpy(), atol=1e-4)


def test_stream_predict_skips_masked_regions_like_the_model():
    model = _model("mamba")
    x = torch.randn(3, 128, 192)
    mask = torch.tensor([True, False, True, True, True, False])
    with torch.no_grad():
        ref = model(x[None], region_mask=mask[None])[0]
    res = stream_predict(model, x, region_mask=mask, progress=False)
    assert torch.allclose(res.logits, ref, atol=1e-4)
    assert res.processed.tolist() == mask.tolist()
    assert torch.isnan(res.region_outputs[1]).all() and not torch.isnan(res.region_outputs[0]).any()


class _NodataSource:
    """A source with nodata: region (0, 1) is entirely nodata."""

    def __init__(self, arr):
        self.arr, self.shape, self.name = arr, arr.shape, "nodata"

    def read(self, y, x, h, w):
        out = np.zeros((self.shape[0], h, w), np.float32)
        sub = self.arr[:, y : y + h, x : x + w]
        out[:, : sub.shape[1], : sub.shape[2]] = sub
        return out

    def read_mask(self, y, x, h, w):
        m = np.zeros((h, w), bool)
        m[: max(0, min(h, self.shape[1] - y)), : max(0, min(w, self.shape[2] - x))] = True
        if x >= 64 and y < 64:
            m[:] = False
        return m


def test_nodata_regions_are_skipped():
    model = _model("txl")
    arr = np.random.default_rng(0).normal(size=(3, 128, 128)).astype(np.float32)
    res = stream_predict(model, _NodataSource(arr), progress=False)
    assert res.processed.tolist() == [True, False, True, True]
    with torch.no_grad():
        ref = model(torch.from_numpy(arr)[None], region_mask=res.processed[None])[0]
    assert torch.allclose(res.logits, ref, atol=1e-4)


def test_interrupted_run_resumes(tmp_path, caplog):
    model = _model("mamba")
    x = np.random.default_rng(1).normal(size=(3, 256, 256)).astype(np.float32)
    full = stream_predict(model, x, progress=False)

    class Boom(Exception):
        pass

    calls = {"n": 0}

    seen = []

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom
        seen.append(len(batch))
        return batch

    out = tmp_path / "run.zarr"
    with pytest.raises(Boom):
        stream_predict(
            model, x, region_batch=4, out=out, transform=flaky, progress=False, prefetch=0
        )
    import zarr

    state = zarr.open_group(str(out), mode="r")["state"][:]
    assert (state == 1).sum() == 8  # two batches landed before the failure
    with pytest.raises(FileExistsError, match="resume=True"):
        stream_predict(model, x, out=out, transform=flaky, progress=False)
    seen.clear()
    res = stream_predict(
        model, x, region_batch=4, out=out, resume=True, transform=flaky, progress=False
    )
    assert sum(seen) == 8  # only the 8 regions still to do were encoded
    assert res.resumed
    assert torch.allclose(res.logits, full.logits, atol=1e-5)
    # another model: the store is not reused (one warning line), the result is the new model's
    other = _model("txl")
    with caplog.at_level("WARNING", logger="xt_plugins"):
        redone = stream_predict(other, x, out=out, resume=True, transform=flaky, progress=False)
    assert [r.getMessage() for r in caplog.records] == [
        f"{out}: was made from another weights / settings; starting afresh"
    ]
    fresh = stream_predict(other, x, progress=False)
    assert not redone.resumed and torch.allclose(redone.logits, fresh.logits, atol=1e-6)


def test_dense_map(tmp_path):
    model = _model("hyper", context_pool=None)
    x = torch.randn(3, 128, 192)
    res = stream_predict(model, x, out=tmp_path / "d.zarr", dense=True, progress=False)
    assert res.region_map.shape == (3, 4, 6)  # 2 x 2 tokens per 64-px region
    assert np.allclose(np.asarray(res.region_map[:]).sum(0), 1, atol=1e-5)


def test_cell_counts_cover_valid_tokens():
    model = _model("txl", context_pool=None)
    grid = model.grid_for(100, 70)  # regions 64 px, tokens stride 32: crop 4 x 3 tokens
    counts = cell_counts(model, grid)
    assert counts.sum() == 4 * 3
    assert counts[-1].tolist() == [1, 0, 1, 0]  # right column of the last region is padding


@pytest.mark.parametrize("context", CONTEXTS)
def test_stream_forward_chunked_checkpointed_gradients_equal_plain(context):
    torch.manual_seed(0)
    x = torch.randn(3, 130, 200)
    plain = tiny_model("convnext_tiny", context, num_classes=2).train()
    streamed = tiny_model(
        "convnext_tiny", context, num_classes=2, region_chunk=3, checkpoint_regions=True
    ).train()
    streamed.load_state_dict(plain.state_dict())
    target = torch.tensor([1])
    loss_a = torch.nn.functional.cross_entropy(plain(x[None]), target)
    loss_a.backward()
    logits = stream_forward(streamed, x)
    loss_b = torch.nn.functional.cross_entropy(logits[None], target)
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    for (name, pa), pb in zip(plain.named_parameters(), streamed.parameters(), strict=True):
        if pa.grad is None:
            assert pb.grad is None or pb.grad.abs().max() == 0, name
            continue
        # float32 sums in another order: errors scale with the largest gradient of the tensor
        scale = float(pa.grad.abs().max())
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5 + 1e-6 * scale, rtol=1e-4), name


def test_grad_ratio_keeps_region_order_and_subset_gradients():
    torch.manual_seed(0)
    model = tiny_model(
        "convnext_tiny", "mamba", num_classes=2, grad_ratio=0.5, region_chunk=2
    ).train()
    regions = torch.randn(8, 3, 64, 64, requires_grad=True)
    ref = model.region_encoder(regions)[-1]
    out = model.encode_regions(regions, stages=[3])[0]
    assert torch.allclose(out, ref, atol=1e-6)  # same values, original order
    out.sum().backward()
    with_grad = (regions.grad.abs().flatten(1).sum(1) > 0).sum().item()
    assert with_grad == 4
    model.eval()  # inference: all regions, no subset
    with torch.no_grad():
        assert torch.allclose(model.encode_regions(regions.detach(), stages=[3])[0], ref, atol=1e-6)


def test_grad_ratio_training_step_through_stream_forward():
    model = tiny_model(
        "convnext_tiny",
        "txl",
        num_classes=2,
        grad_ratio=0.25,
        region_chunk=4,
        checkpoint_regions=True,
    ).train()
    x = torch.randn(3, 256, 256)
    logits = stream_forward(model, x)
    logits.sum().backward()
    first = next(model.region_encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_stream_forward_refuses_an_empty_region_mask():
    model = tiny_model("convnext_tiny", "none", num_classes=2)
    with pytest.raises(ValueError, match="no region"):
        stream_forward(model, torch.randn(3, 64, 128), region_mask=torch.tensor([False, False]))
