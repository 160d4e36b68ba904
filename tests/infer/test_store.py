"""The run store's identity and damage handling through stream_predict (issue 12, cases 1, 2, 4)."""

import shutil

import numpy as np
import pytest
import torch
import zarr

from xt_plugins.infer import StoreError, stream_predict

from ..conftest import tiny_model


def _model(context="mamba", seed=0, **kw):
    kw.setdefault("num_classes", 3)
    return tiny_model("convnext_tiny", context, **kw).eval()


def _image(seed, shape=(3, 200, 330)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


def _chunk_files(array_dir):
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


def test_resume_on_another_image_of_the_same_size_gives_that_image_logits(tmp_path, caplog):
    model = _model()
    a, b = _image(1), _image(2)
    out = tmp_path / "run.zarr"
    first = stream_predict(model, a, out=out, progress=False)
    with caplog.at_level("WARNING", logger="xt_plugins"):
        res = stream_predict(model, b, out=out, resume=True, progress=False)
    truth = stream_predict(model, b, progress=False)
    assert not res.resumed
    assert torch.allclose(res.logits, truth.logits, atol=1e-6)
    assert not torch.allclose(res.logits, first.logits, atol=1e-3)
    assert [r.getMessage() for r in caplog.records] == [
        f"{out}: was made from another source; starting afresh"
    ]
    # the same image resumes (nothing to encode) and answers the same
    again = stream_predict(model, b, out=out, resume=True, progress=False)
    assert again.resumed and torch.allclose(again.logits, truth.logits, atol=1e-6)


def test_a_lost_token_chunk_of_a_partial_store_is_re_encoded(tmp_path, caplog):
    model = _model()
    x = _image(3, (3, 640, 640))  # 100 regions, token chunks of 256 regions: one chunk...
    out = tmp_path / "run.zarr"
    stream_predict(model, x, out=out, progress=False)
    truth = stream_predict(model, x, progress=False)
    # a partial store: half the regions to do, and the stored tokens chunk gone
    group = zarr.open_group(str(out), mode="r+")
    state = group["state"][:]
    state[50:] = 0
    group["state"][:] = state
    attrs = dict(group.attrs["xt_plugins_run"], complete=False)
    group.attrs["xt_plugins_run"] = attrs
    for f in _chunk_files(out / "tokens"):
        f.unlink()
    seen = []
    with caplog.at_level("WARNING", logger="xt_plugins"):
        res = stream_predict(model, x, out=out, resume=True, progress=False, transform=None)
    assert torch.allclose(res.logits, truth.logits, atol=1e-5), (res.logits, truth.logits)
    assert "re-encoding them" in caplog.text
    del seen


def test_a_corrupt_chunk_is_recomputed_not_a_decompression_error(tmp_path, caplog):
    model = _model()
    x = _image(4)
    out = tmp_path / "run.zarr"
    truth = stream_predict(model, x, out=out, progress=False)
    for f in _chunk_files(out / "region_sum") + _chunk_files(out / "state"):
        f.write_bytes(b"\x28\xb5\x2f\xfd garbage" * 3)  # a zstd magic number, then junk
    with caplog.at_level("WARNING", logger="xt_plugins"):
        res = stream_predict(model, x, out=out, resume=True, progress=False)
    assert torch.allclose(res.logits, truth.logits, atol=1e-5)
    assert "unreadable" in caplog.text


def test_a_finished_store_with_a_lost_probs_chunk_is_recomputed(tmp_path, caplog):
    model = _model()
    x = _image(5)
    out = tmp_path / "run.zarr"
    truth = stream_predict(model, x, out=out, progress=False, keep_tokens=False)
    for f in _chunk_files(out / "probs"):
        f.unlink()
    with caplog.at_level("WARNING", logger="xt_plugins"):
        res = stream_predict(model, x, out=out, resume=True, progress=False, keep_tokens=False)
    assert "finished store is damaged" in caplog.text and "recomputing" in caplog.text
    assert torch.isfinite(res.region_outputs).all()
    assert torch.allclose(res.region_outputs, truth.region_outputs, atol=1e-5)
    # and a sound finished store answers from its maps without encoding anything
    calls = []
    again = stream_predict(
        model,
        x,
        out=out,
        resume=True,
        progress=False,
        keep_tokens=False,
        transform=None,
    )
    assert again.resumed and not calls
    assert torch.allclose(again.logits, truth.logits, atol=1e-6)


def test_a_foreign_or_unreadable_store_is_one_line_naming_it_and_no_resume(tmp_path):
    model = _model()
    x = _image(6)
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("data", shape=(4,), dtype="f4")
    with pytest.raises(StoreError, match="not an xt-plugins run store") as err:
        stream_predict(model, x, out=other, resume=True, progress=False)
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken.zarr"
    stream_predict(model, x, out=broken, progress=False)
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"broken.zarr: not a readable run store.*--no-resume"):
        stream_predict(model, x, out=broken, resume=True, progress=False)


def test_nan_pixels_are_nodata_like_open_image(tmp_path):
    from xt_plugins.io import open_image

    model = _model()
    x = _image(7)
    x[:, :64, :128] = np.nan  # regions (0, 0) and (0, 1) entirely NaN
    x[:, 100:110, 200:210] = np.nan  # a few NaN pixels inside region (1, 3)
    res = stream_predict(model, x, progress=False)
    via = stream_predict(model, open_image(x.copy()), progress=False)
    assert torch.isfinite(res.logits).all()
    assert torch.equal(res.logits, via.logits)
    assert not res.processed[0] and not res.processed[1] and res.processed[2:].all()
    clean = np.where(np.isnan(x), 0, x)
    mask = torch.ones(24, dtype=torch.bool)
    mask[:2] = False
    with torch.no_grad():
        ref = model(torch.from_numpy(clean)[None], region_mask=mask[None])[0]
    assert torch.allclose(res.logits, ref, atol=1e-4)


def test_band_mismatch_and_empty_mask_fail_before_anything_is_written(tmp_path):
    model = _model()
    out = tmp_path / "run.zarr"
    with pytest.raises(ValueError, match=r"has 2 band\(s\) but the model takes 3 input channels"):
        stream_predict(model, _image(8, (2, 128, 128)), out=out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="region_mask leaves no region to encode"):
        stream_predict(
            model, _image(8), out=out, region_mask=np.zeros((4, 6), bool), progress=False
        )
    assert not out.exists()
    shutil.rmtree(out, ignore_errors=True)
