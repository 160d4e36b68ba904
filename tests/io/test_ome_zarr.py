"""OME-Zarr slide maps: multiscale region maps in micrometres, opened by ome-zarr's reader."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from xt_plugins.io import ZarrSource, ome_zarr_levels, write_ome_zarr_map

ome_io = pytest.importorskip("ome_zarr.io")
ome_reader = pytest.importorskip("ome_zarr.reader")


def read_image(path) -> ome_reader.Node:
    """The first node ome-zarr's reader finds at ``path`` (the multiscale image)."""
    location = ome_io.parse_url(str(path))
    assert location is not None, f"ome-zarr does not see a zarr store at {path}"
    nodes = list(ome_reader.Reader(location)())
    assert nodes, f"ome-zarr found no image at {path}"
    return nodes[0]


def region_map(c: int = 2, rows: int = 5, cols: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    probs = rng.random((c, rows, cols)).astype(np.float32)
    probs[:, 0, 0] = np.nan  # background region
    probs[:, rows - 1, :] = np.nan  # a row without tissue
    return probs


def test_levels_are_nan_aware_2x_means_down_to_one_pixel():
    probs = region_map()
    levels = ome_zarr_levels(probs)
    assert [lv.shape for lv in levels] == [(2, 5, 7), (2, 3, 4), (2, 2, 2), (2, 1, 1)]
    np.testing.assert_array_equal(levels[0], probs)
    # level-1 cell (0, 0) averages the three finite regions of the 2x2 block
    expected = np.nanmean(probs[:, :2, :2].reshape(2, -1), axis=1)
    np.testing.assert_allclose(levels[1][:, 0, 0], expected, rtol=1e-6)
    assert np.isnan(levels[1][:, 2, :]).all()  # only no-tissue rows below: stays NaN
    np.testing.assert_allclose(levels[1][:, 1, 3], np.nanmean(probs[:, 2:4, 6], axis=1), rtol=1e-6)
    assert len(ome_zarr_levels(np.ones((1, 1)))) == 1


def test_inside_an_existing_slide_group_ngff_05_read_by_ome_zarr(tmp_path):
    probs = region_map()
    store = tmp_path / "slide.zarr"
    group = zarr.open_group(str(store), mode="w")  # like the run's per-slide store (zarr v3)
    group.attrs["xt_plugins"] = {"complete": True}
    group.create_array("probs", data=probs)
    image = write_ome_zarr_map(
        group, "map", probs, mpp_um=0.5, region_size=256, channel_names=["normal", "tumor"]
    )
    assert image.path == "map"
    assert sorted(group.keys()) == ["map", "probs"] and group.attrs["xt_plugins"]["complete"]
    np.testing.assert_array_equal(ZarrSource(store, name="probs").read(0, 0, 5, 7), probs)

    node = read_image(store / "map")
    assert node.zarr.version == "0.5"
    data0 = np.asarray(node.data[0])
    np.testing.assert_array_equal(data0, probs)
    assert [d.shape for d in node.data] == [(2, 5, 7), (2, 3, 4), (2, 2, 2), (2, 1, 1)]
    axes = node.metadata["axes"]
    assert [(a["name"], a["type"], a.get("unit")) for a in axes] == [
        ("c", "channel", None),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    transforms = node.metadata["coordinateTransformations"]
    scale0 = next(t["scale"] for t in transforms[0] if t["type"] == "scale")
    assert scale0 == [1.0, 128.0, 128.0]  # 256 px regions x 0.5 um/px
    scales = [next(t["scale"] for t in level if t["type"] == "scale") for level in transforms]
    assert [s[1] for s in scales] == [128.0, 256.0, 512.0, 1024.0]
    shift = [next(t["translation"] for t in lv if t["type"] == "translation") for lv in transforms]
    assert shift[0] == [0.0, 63.75, 63.75]  # region centre: (256 - 1) / 2 px * 0.5 um
    assert shift[1] == [0.0, 127.75, 127.75]  # 2x2 regions: (512 - 1) / 2 px * 0.5 um
    assert node.metadata["channel_names"] == ["normal", "tumor"]
    arr = zarr.open_array(str(store / "map" / "0"), mode="r")
    assert arr.metadata.dimension_names == ("c", "y", "x")
    # and the spec's own models (ome-zarr-models, installed with ome-zarr) accept it
    models = pytest.importorskip("ome_zarr_models.v05.image")
    assert models.Image.from_zarr(image).attributes.ome.version == "0.5"


def test_new_store_ngff_04_on_zarr_v2_and_anisotropic_mpp(tmp_path):
    probs = region_map(1, 4, 4)[0]  # (rows, cols): one channel
    path = tmp_path / "maps.zarr"
    write_ome_zarr_map(path, "tumor", probs, mpp_um=(0.25, 0.5), region_size=(512, 256),
                       version="0.4")  # fmt: skip
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 2
    attrs = group["tumor"].attrs.asdict()
    assert attrs["multiscales"][0]["version"] == "0.4" and "omero" not in attrs
    models = pytest.importorskip("ome_zarr_models.v04.image")
    models.Image.from_zarr(group["tumor"])  # raises unless valid NGFF 0.4
    node = read_image(path / "tumor")
    assert node.zarr.version == "0.4"
    np.testing.assert_array_equal(np.asarray(node.data[0]), probs[None])
    scale0 = node.metadata["coordinateTransformations"][0][0]
    assert scale0 == {"type": "scale", "scale": [1.0, 128.0, 128.0]}  # 512 * 0.25, 256 * 0.5
    # a second map goes beside the first; an existing one is replaced, or kept on request
    write_ome_zarr_map(path, "normal", 1 - probs, mpp_um=0.25, region_size=512)
    write_ome_zarr_map(path, "tumor", probs * 0, mpp_um=0.25, region_size=512)
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.group_keys()) == ["normal", "tumor"]
    np.testing.assert_array_equal(np.asarray(read_image(path / "tumor").data[0]), probs[None] * 0)
    with pytest.raises(FileExistsError, match="pass overwrite=True or another name"):
        write_ome_zarr_map(path, "tumor", probs, mpp_um=0.25, region_size=512, overwrite=False)
    with pytest.raises(ValueError, match="NGFF 0.5 needs zarr v3, the group is zarr v2"):
        write_ome_zarr_map(path, "other", probs, mpp_um=0.25, version="0.5")


def test_errors_name_the_fix(tmp_path):
    probs = region_map()
    with pytest.raises(ValueError, match="2 channel_names for 1 channels"):
        write_ome_zarr_map(tmp_path / "a.zarr", "m", probs[:1], 0.5, 256, ["a", "b"])
    with pytest.raises(ValueError, match="mpp_um must be positive"):
        write_ome_zarr_map(tmp_path / "a.zarr", "m", probs, 0.0, 256)
    with pytest.raises(ValueError, match="name must be one group name"):
        write_ome_zarr_map(tmp_path / "a.zarr", "a/b", probs, 0.5, 256)
    with pytest.raises(ValueError, match=r"must be \(C, rows, cols\)"):
        write_ome_zarr_map(tmp_path / "a.zarr", "m", np.zeros((1, 2, 3, 4)), 0.5)
