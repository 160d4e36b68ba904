"""Writers: tiled GeoTIFF and Zarr block by block, PNG heatmaps, GeoJSON for QGIS and QuPath."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from xt_plugins.io import (
    GeoTiffWriter,
    RasterSource,
    ZarrSource,
    ZarrWriter,
    boxes_to_geojson,
    points_to_geojson,
    save_heatmap_png,
    write_geotiff,
)

CRS = "EPSG:32631"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4650000.0)


def probs(c: int = 2, h: int = 70, w: int = 90) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((c, h, w), dtype=np.float32)


def test_geotiff_writer_round_trip(tmp_path):
    data = probs()
    data[0, 5, 5] = np.nan
    path = tmp_path / "out" / "pred.tif"  # parent folders are created
    with GeoTiffWriter(
        path, data.shape, np.float32, CRS, TRANSFORM, nodata=-1.0, tile=32,
        descriptions=["vessel", "fishing"],
    ) as out:  # fmt: skip
        for y in range(0, 70, 32):
            for x in range(0, 90, 32):
                block = np.zeros((2, 32, 32), np.float32)  # padded region output
                part = data[:, y : y + 32, x : x + 32]
                block[:, : part.shape[1], : part.shape[2]] = part
                out.write(y, x, block)  # overhang is dropped
    with rasterio.open(path) as ds:
        assert (ds.count, ds.height, ds.width, ds.dtypes[0]) == (2, 70, 90, "float32")
        assert ds.crs.to_string() == CRS and ds.transform == TRANSFORM and ds.nodata == -1.0
        assert ds.block_shapes[0] == (32, 32) and ds.descriptions == ("vessel", "fishing")
        back = ds.read()
    expected = np.where(np.isnan(data), -1.0, data)
    np.testing.assert_array_equal(back, expected)
    mask = RasterSource(path).read_mask(0, 0, 70, 90)
    assert mask[5, 5] and mask.sum() == 70 * 90  # nodata in one band only is still data
    assert not RasterSource(path, bands=1).read_mask(5, 5, 1, 1)[0, 0]


def test_write_geotiff_convenience_and_errors(tmp_path):
    labels = (np.arange(60 * 50) % 7).astype(np.uint8).reshape(60, 50)
    path = write_geotiff(tmp_path / "labels.tif", labels, CRS, TRANSFORM, nodata=255)
    src = RasterSource(path)
    assert src.shape == (1, 60, 50) and src.crs.to_string() == CRS and src.nodata == 255
    np.testing.assert_array_equal(src.read(0, 0, 60, 50)[0], labels)
    with GeoTiffWriter(tmp_path / "u8.tif", (60, 50), np.uint8, CRS, TRANSFORM, tile=16) as out:
        with pytest.raises(TypeError, match="cannot write float32 into a uint8"):
            out.write(0, 0, np.zeros((60, 50), np.float32))
        with pytest.raises(ValueError, match=r"expected a \(1, h, w\) block"):
            out.write(0, 0, np.zeros((2, 4, 4), np.uint8))
        out.write(100, 100, np.ones((4, 4), np.uint8))  # fully outside: nothing happens
    with pytest.raises(ValueError, match="multiple of 16"):
        GeoTiffWriter(tmp_path / "x.tif", (1, 8, 8), np.uint8, tile=20)
    plain = write_geotiff(tmp_path / "plain.tif", labels)  # no CRS: pixel space
    with rasterio.open(plain) as ds:
        assert ds.crs is None


def test_geotiff_overviews(tmp_path):
    data = np.tile(np.arange(600, dtype=np.uint16), (1, 600, 1))
    # COG (default): halving until the smallest overview fits one 256-px tile (GDAL's AUTO)
    path = write_geotiff(tmp_path / "big.tif", data, CRS, TRANSFORM, tile=256, overviews=True)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == [2, 4]
    plain = write_geotiff(tmp_path / "plain.tif", data, CRS, TRANSFORM, tile=256, cog=False)
    with rasterio.open(plain) as ds:
        assert ds.overviews(1) == []
    plain = write_geotiff(
        tmp_path / "plain_ov.tif", data, CRS, TRANSFORM, tile=256, overviews=True, cog=False
    )
    with rasterio.open(plain) as ds:
        assert ds.overviews(1) == [2]  # the plain file keeps its old rule: side / f >= 256


@pytest.mark.slow
def test_geotiff_reads_in_torchgeo(tmp_path):
    pytest.importorskip("torchgeo")
    from torchgeo.datasets import RasterDataset

    data = probs(2, 64, 48)
    folder = tmp_path / "scenes"
    write_geotiff(folder / "scene.tif", data, CRS, TRANSFORM)
    ds = RasterDataset(paths=str(folder))
    assert ds.crs.to_string() == CRS and ds.res == (10.0, 10.0)
    x0, y1 = TRANSFORM.c, TRANSFORM.f
    sample = ds[x0 : x0 + 480 : 10.0, y1 - 640 : y1 : 10.0]
    assert tuple(sample["image"].shape) == (2, 64, 48)
    np.testing.assert_allclose(sample["image"].numpy(), data, atol=1e-6)


def test_zarr_writer_round_trip(tmp_path):
    data = probs(1, 40, 50)
    out = ZarrWriter(tmp_path / "pred.zarr", (1, 40, 50), np.float32, chunk=16)
    out.write(0, 0, data[:, :20, :20])
    out.write(32, 32, np.ones((1, 16, 32), np.float32))  # overhangs the right edge
    src = ZarrSource(tmp_path / "pred.zarr")
    back, mask = src.read_with_mask(0, 0, 40, 50)
    np.testing.assert_array_equal(back[:, :20, :20], data[:, :20, :20])
    assert np.isnan(back[0, 25, 25]) and not mask[25, 25]  # never written: NaN fill
    assert (back[0, 32:, 32:] == 1).all() and mask[32:, 32:].all()


def test_heatmap_png_over_background(tmp_path):
    prob = np.array([[0.0, 1.0], [np.nan, 0.5]], np.float32)
    background = np.full((40, 60, 3), 200, np.uint8)
    path = save_heatmap_png(prob, tmp_path / "heat.png", background=background, alpha=0.5)
    with Image.open(path) as img:
        assert img.size == (60, 40) and img.mode == "RGB"
        pixels = np.asarray(img)
    np.testing.assert_array_equal(pixels[30, 10], [200, 200, 200])  # NaN: background only
    assert not np.array_equal(pixels[5, 5], pixels[5, 45])  # 0 and 1 get different colours
    smooth = save_heatmap_png(prob, tmp_path / "smooth.png", background, resample="bilinear")
    with Image.open(smooth) as img:
        assert img.size == (60, 40)


def test_heatmap_png_alone_is_rgba_with_transparent_nan(tmp_path):
    prob = np.array([[0.0, 1.0, np.nan]], np.float32)
    path = save_heatmap_png(prob, tmp_path / "heat.png", cmap="viridis")
    with Image.open(path) as img:
        assert img.mode == "RGBA" and img.size == (3, 1)
        alpha = np.asarray(img)[0, :, 3]
    assert alpha.tolist() == [255, 255, 0]
    with pytest.raises(ValueError, match=r"prob must be \(h, w\)"):
        save_heatmap_png(np.zeros((1, 2, 3)), tmp_path / "bad.png")


def test_boxes_to_geojson_qupath_and_map_space(tmp_path):
    boxes = [(10, 20, 30, 50), np.array([0.5, 1.5, 2.5, 3.5])]
    props = [{"class_name": "tumor", "score": np.float32(0.75)}, {"score": float("nan")}]
    fc = boxes_to_geojson(boxes, props, tmp_path / "boxes.geojson")
    loaded = json.loads((tmp_path / "boxes.geojson").read_text())
    assert loaded == fc and loaded["type"] == "FeatureCollection" and "crs" not in loaded
    first, second = loaded["features"]
    assert first["geometry"] == {
        "type": "Polygon",
        "coordinates": [[[10, 20], [30, 20], [30, 50], [10, 50], [10, 20]]],
    }
    p = first["properties"]
    assert p["objectType"] == "annotation" and p["classification"]["name"] == "tumor"
    assert len(p["classification"]["color"]) == 3 and p["score"] == 0.75
    assert p["measurements"] == {"score": 0.75}
    assert second["properties"]["score"] is None and "classification" not in second["properties"]
    geo = boxes_to_geojson([(500000, 4649000, 500100, 4649100)], [{"id": 1}], crs_name=CRS)
    assert geo["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32631"
    assert geo["features"][0]["properties"] == {"id": 1}
    with pytest.raises(ValueError, match="2 property dicts for 1 geometries"):
        boxes_to_geojson([(0, 0, 1, 1)], [{}, {}])
    with pytest.raises(ValueError, match=r"\(x0, y0, x1, y1\)"):
        boxes_to_geojson([(0, 0, 1)])


def test_points_to_geojson(tmp_path):
    xs, ys = np.array([500005.0, 500015.0]), np.array([4649995.0, 4649985.0])
    props = [{"length_m": 42.0, "is_fishing": True}, {"length_m": 12.5, "is_fishing": False}]
    path = tmp_path / "vessels.geojson"
    points_to_geojson(xs, ys, props, path, crs=rasterio.crs.CRS.from_string(CRS))
    fc = json.loads(path.read_text())
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32631"
    assert [f["geometry"]["coordinates"] for f in fc["features"]] == [
        [500005.0, 4649995.0],
        [500015.0, 4649985.0],
    ]
    assert fc["features"][0]["properties"] == props[0]
    pixel = points_to_geojson([3], [4], [{"class_name": "cell"}])
    assert pixel["features"][0]["properties"]["objectType"] == "annotation"
    assert pixel["features"][0]["geometry"] == {"type": "Point", "coordinates": [3.0, 4.0]}
