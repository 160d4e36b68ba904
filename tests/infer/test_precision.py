"""Precision and flip TTA: bounded bf16 error, exact TTA on a flip-equivariant model, identity."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from xt_plugins.infer import stream_predict
from xt_plugins.infer.dense import WindowPlan, predict_windows
from xt_plugins.infer.precision import FLIPS, check_precision, check_tta, flip_tta

from .test_blend import ArraySource, ArrayWriter, _smooth_image


def _image(h: int = 128, w: int = 192) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (_smooth_image(h, w, 3) + 0.1 * rng.standard_normal((3, h, w))).astype(np.float32)


def _symmetrize(model: nn.Module) -> nn.Module:
    """Make every conv kernel symmetric under both flips: a ConvNeXt becomes flip-equivariant."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                w = mod.weight
                w.copy_(sum(w.flip(d) if d else w for d in FLIPS) / 4)
    return model


def test_names_and_errors():
    assert check_precision(32) == "32" and check_precision("bf16-mixed") == "bf16"
    assert check_precision("16", "cuda:0") == "16"
    with pytest.raises(ValueError, match="needs a CUDA device.*bf16"):
        check_precision("16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("8")
    assert check_tta("none") is None and check_tta("flips") == "flips"
    with pytest.raises(ValueError, match="tta must be"):
        check_tta("rot90")


def test_bf16_stays_close_to_fp32():
    """Measured on this tiny model (Mamba context) and image: |logits bf16 - fp32| = 3.9e-4,
    region probabilities within 6.2e-4 (2.7e-3 / 3.6e-4 without context); bound 5e-3."""
    model = tiny_model(num_classes=2, context="mamba").eval()
    image = _image()
    ref = stream_predict(model, image, progress=False)
    low = stream_predict(model, image, progress=False, precision="bf16")
    assert low.logits.dtype == torch.float32
    assert (low.logits - ref.logits).abs().max() < 5e-3
    assert (low.region_outputs - ref.region_outputs).abs().max() < 5e-3
    assert not torch.equal(low.logits, ref.logits)  # bf16 really ran


def test_tta_of_a_flip_equivariant_model_changes_nothing():
    model = _symmetrize(tiny_model(num_classes=2, context="mamba")).eval()
    image = _image()
    x = torch.from_numpy(image[:, :64, :64])[None]
    with torch.no_grad():  # the region encoder is equivariant: flipped input, flipped map
        last = model.region_encoder(x)[-1]
        flipped = model.region_encoder(x.flip(-1))[-1].flip(-1)
    torch.testing.assert_close(flipped, last, atol=1e-5, rtol=1e-5)
    ref = stream_predict(model, image, progress=False)
    tta = stream_predict(model, image, progress=False, tta="flips")
    torch.testing.assert_close(tta.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tta.region_outputs, ref.region_outputs, atol=1e-5, rtol=1e-5)


def test_tta_of_a_plain_model_is_the_mean_of_flipped_runs():
    model = tiny_model(num_classes=2, context="none").eval()
    x = torch.from_numpy(_image(64, 64))[None]

    def enc(z):
        return model.region_encoder(z)[-1]

    with torch.no_grad():
        manual = sum(enc(x.flip(d)).flip(d) if d else enc(x) for d in FLIPS) / 4
        got = flip_tta(enc, x)
        assert not torch.allclose(enc(x), manual, atol=1e-4)  # the flips matter here
    torch.testing.assert_close(got, manual)
    # dense windows: outputs of a window-flipping model, averaged after flipping back
    source = ArraySource(_image(96, 160))
    plan = WindowPlan(16, 4, 1)

    def fn(z):
        return torch.sigmoid(z[:, :1] * torch.linspace(0, 1, z.shape[-1])), None

    outs = {}
    for tta in (None, "flips"):
        writer = ArrayWriter(1, 96, 160)
        predict_windows(source, plan, fn, writer, channels=1, progress=False, tta=tta)
        outs[tta] = writer.data
    ramp = torch.linspace(0, 1, 64)

    def both(z):  # x-flips reverse the ramp, y-flips leave it: the mean of the two
        p = torch.sigmoid(z[:, :1] * ramp) + torch.sigmoid(z[:, :1] * ramp.flip(0))
        return p / 2, None

    writer = ArrayWriter(1, 96, 160)
    predict_windows(source, plan, both, writer, channels=1, progress=False)
    np.testing.assert_allclose(outs["flips"], writer.data, atol=1e-6)
    assert not np.allclose(outs["flips"], outs[None], atol=1e-3)


def test_precision_and_tta_are_part_of_the_run_identity(tmp_path, caplog):
    model = tiny_model(num_classes=2, context="none").eval()
    image, out = _image(), tmp_path / "run.zarr"
    first = stream_predict(model, image, out=out, progress=False)
    again = stream_predict(model, image, out=out, progress=False, resume=True)
    assert again.resumed
    with caplog.at_level(logging.WARNING, logger="xt_plugins"):
        other = stream_predict(model, image, out=out, progress=False, resume=True, tta="flips")
    assert not other.resumed and "starting afresh" in caplog.text
    with pytest.raises(ValueError, match="needs a CUDA device"):
        stream_predict(model, image, out=tmp_path / "fp16.zarr", progress=False, precision="16")
    assert not (tmp_path / "fp16.zarr").exists()  # refused before anything is written
    assert torch.allclose(first.logits, again.logits)
