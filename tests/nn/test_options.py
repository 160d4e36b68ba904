"""One list of xT options: every entry point takes them under the same names and defaults."""

import inspect

from xt_plugins.models import region_encoder_and_options
from xt_plugins.nn.options import MODEL_OPTIONS, RUNTIME_OPTIONS, XT_OPTIONS, split_options
from xt_plugins.nn.xt import XTModel


def test_xtmodel_defaults_are_the_option_defaults():
    params = inspect.signature(XTModel.__init__).parameters
    assert set(MODEL_OPTIONS) <= set(params)
    for name in MODEL_OPTIONS:
        assert params[name].default == XT_OPTIONS[name].default, name
    assert RUNTIME_OPTIONS == {
        "region_chunk",
        "grad_ratio",
        "checkpoint_regions",
        "checkpoint_context",
    }


def test_task_options_take_the_same_defaults():
    from xt_plugins.torchgeo.tasks import TASK_OPTIONS, XTTaskOptions

    params = inspect.signature(XTTaskOptions.__init__).parameters
    for name in TASK_OPTIONS:
        assert params[name].default == XT_OPTIONS[name].default, name


def test_split_options_and_the_shared_builder():
    model, backbone = split_options({"context_pool": 2, "grad_ratio": 0.5, "dims": (8, 16, 32, 64)})
    assert model == {"context_pool": 2, "grad_ratio": 0.5} and backbone == {"dims": (8, 16, 32, 64)}
    encoder, kwargs = region_encoder_and_options(
        "convnext_tiny", region_size=64, in_chans=2, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
        context_pool=2, region_chunk=3,
    )  # fmt: skip
    assert kwargs == {"context_pool": 2, "region_chunk": 3}
    assert encoder.channels == [8, 16, 32, 64] and encoder.in_chans == 2
