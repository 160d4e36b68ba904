"""QuPath GeoJSON: objects checked against a JSON Schema written from QuPath, read by geopandas."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from xt_plugins.io import (
    boxes_to_geojson,
    points_to_geojson,
    regions_to_qupath_geojson,
    write_qupath_geojson,
)

jsonschema = pytest.importorskip("jsonschema")
geopandas = pytest.importorskip("geopandas")
shapely_geometry = pytest.importorskip("shapely.geometry")

SCHEMA = json.loads((Path(__file__).parent / "qupath_geojson.schema.json").read_text())
CRS = "EPSG:32631"


def conforms(collection: dict) -> None:
    """Raise unless ``collection`` is what QuPath 0.4+ imports (see the schema's description)."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(collection, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_schema_has_teeth():
    good = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
                "properties": {"objectType": "detection", "measurements": {"p": 0.5}},
            }
        ],
    }
    conforms(good)
    bad_cases = [
        ("objectType", None),  # QuPath would guess "annotation": we require it
        ("measurements", [{"name": "p", "value": 0.5}]),  # the pre-0.4 list form
        ("measurements", {"p": "high"}),
        ("classification", {"name": "tumor", "color": [1, 2]}),
        ("objectType", "region"),
    ]
    for key, value in bad_cases:
        feature = json.loads(json.dumps(good["features"][0]))
        if value is None:
            del feature["properties"][key]
        else:
            feature["properties"][key] = value
        with pytest.raises(jsonschema.ValidationError):
            conforms({"type": "FeatureCollection", "features": [feature]})


def test_slide_detections_conform_and_load_in_geopandas(tmp_path):
    cell = shapely_geometry.Polygon([(100, 100), (140, 100), (140, 150), (100, 150)])
    geometries = [(10.5, 20.5), (200, 300, 264, 364), cell]
    measurements = [
        {"prob_tumor": np.float32(0.9), "prob_normal": 0.1},
        {"prob_tumor": 0.25, "prob_normal": float("nan"), "is_edge": True},  # NaN: left out
        None,
    ]
    path = tmp_path / "cells.geojson"
    fc = write_qupath_geojson(
        path, geometries, "detection", ["tumor", "normal", None], measurements,
        properties=[{"source": "xt"}, {}, {}], colors={"tumor": (200, 0, 0)},
        metadata={"coordinates": "level-0 pixels, (0, 0) at the top-left image corner"},
    )  # fmt: skip
    loaded = json.loads(path.read_text())
    assert loaded == fc and "crs" not in loaded
    conforms(loaded)
    f0, f1, f2 = loaded["features"]
    assert [str(uuid.UUID(f["id"])) for f in loaded["features"]] == [f0["id"], f1["id"], f2["id"]]
    assert f0["geometry"] == {"type": "Point", "coordinates": [10.5, 20.5]}
    assert f0["properties"] == {
        "source": "xt",
        "objectType": "detection",
        "classification": {"name": "tumor", "color": [200, 0, 0]},
        "measurements": {"prob_tumor": pytest.approx(0.9), "prob_normal": 0.1},
    }
    assert f1["properties"]["measurements"] == {"prob_tumor": 0.25, "is_edge": 1}
    assert len(f1["properties"]["classification"]["color"]) == 3
    assert f1["geometry"]["coordinates"][0][2] == [264.0, 364.0]
    assert "classification" not in f2["properties"] and "measurements" not in f2["properties"]
    assert f2["geometry"]["type"] == "Polygon"

    gdf = geopandas.read_file(path)
    assert len(gdf) == 3 and gdf.crs.to_epsg() == 4326  # no crs member: GDAL assumes RFC 7946
    assert list(gdf.geom_type) == ["Point", "Polygon", "Polygon"]
    assert gdf.geometry.iloc[2].equals(cell) and gdf.geometry.iloc[1].bounds == (200, 300, 264, 364)
    assert list(gdf["objectType"]) == ["detection"] * 3
    assert gdf["measurements"].iloc[0]["prob_normal"] == pytest.approx(0.1)


def test_gzip_by_suffix_and_geopandas_via_vsigzip(tmp_path):
    path = tmp_path / "tiles.geojson.gz"
    fc = write_qupath_geojson(path, [(0, 0, 256, 256), (256, 0, 512, 256)], "tile", "tumor")
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # gzip magic
    loaded = json.loads(gzip.decompress(raw))
    assert loaded == fc
    conforms(loaded)
    gdf = geopandas.read_file(f"/vsigzip/{path}")  # GDAL needs the prefix for .gz
    assert len(gdf) == 2 and list(gdf["objectType"]) == ["tile", "tile"]


def test_scene_detections_in_map_coordinates_with_crs(tmp_path):
    xs, ys = np.array([500005.0, 500015.0]), np.array([4649995.0, 4649985.0])
    props = [
        {"class_name": "vessel", "score": 0.9, "vessel_length_m": 42.0, "is_fishing": True},
        {"class_name": "non-vessel", "score": 0.6, "vessel_length_m": float("nan")},
    ]
    path = tmp_path / "vessels.geojson"
    convention = {"points": "pixel centres: map coordinates of (col + 0.5, row + 0.5)"}
    fc = points_to_geojson(
        xs, ys, props, path, crs=CRS, object_type="detection", metadata=convention
    )
    conforms(fc)
    assert json.loads(path.read_text())["metadata"] == convention
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32631"
    p0, p1 = (f["properties"] for f in fc["features"])
    assert p0["objectType"] == "detection" and p0["classification"]["name"] == "vessel"
    assert p0["measurements"] == {"score": 0.9, "vessel_length_m": 42.0}  # flags stay flags
    assert p0["is_fishing"] is True and p0["score"] == 0.9  # flat columns kept for QGIS
    assert p1["measurements"] == {"score": 0.6} and p1["vessel_length_m"] is None
    gdf = geopandas.read_file(path)
    assert gdf.crs.to_epsg() == 32631
    np.testing.assert_allclose(gdf.geometry.x, xs)
    np.testing.assert_allclose(gdf.geometry.y, ys)
    boxes = boxes_to_geojson([(0, 0, 10, 10)], [{"class_name": "a", "p": 1}], object_type="tile")
    conforms(boxes)
    assert boxes["features"][0]["properties"]["measurements"] == {"p": 1}


def test_region_map_as_tiles_level0_and_map_space(tmp_path):
    probs = np.array(
        [
            [[0.9, 0.2, 0.6], [np.nan, 0.1, 0.7]],  # tumor
            [[0.1, 0.8, 0.4], [np.nan, 0.9, 0.3]],  # normal
        ]
    )  # (2 classes, 2 rows, 3 cols); region (1, 0) has no tissue
    tissue = np.array([[1.0, 0.5, 0.25], [0.0, 0.75, 1.0]])
    path = tmp_path / "regions.geojson"
    fc = regions_to_qupath_geojson(
        path, probs, 512.0, ["tumor", "normal"], image_size=(900, 1400), extra={"tissue": tissue}
    )
    conforms(fc)
    feats = fc["features"]
    assert len(feats) == 5
    by_index = {(f["properties"]["measurements"]["row"], f["properties"]["measurements"]["col"]): f
                for f in feats}  # fmt: skip
    assert set(by_index) == {(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)}
    last = by_index[(1, 2)]
    assert last["geometry"]["coordinates"][0][:3] == [[1024.0, 512.0], [1400.0, 512.0],
                                                      [1400.0, 900.0]]  # fmt: skip
    assert last["properties"]["classification"]["name"] == "tumor"
    assert last["properties"]["measurements"] == {
        "prob_tumor": 0.7, "prob_normal": 0.3, "row": 1, "col": 2, "tissue": 1.0,
    }  # fmt: skip
    assert by_index[(0, 1)]["properties"]["classification"]["name"] == "normal"
    assert all(f["properties"]["objectType"] == "tile" for f in feats)
    gdf = geopandas.read_file(path)
    assert len(gdf) == 5 and gdf.total_bounds.tolist() == [0.0, 0.0, 1400.0, 900.0]

    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4650000.0)
    single = regions_to_qupath_geojson(
        None, probs[0], 32, ["vessel"], transform=transform, crs=CRS, object_type="detection"
    )
    conforms(single)
    first = single["features"][0]
    assert first["geometry"]["coordinates"][0][2] == [500320.0, 4649680.0]  # pixel (32, 32)
    names = [f["properties"].get("classification", {}).get("name") for f in single["features"]]
    assert names == ["vessel", None, "vessel", None, "vessel"]  # p >= 0.5 on one channel


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="object_type must be one of"):
        write_qupath_geojson(None, [(0, 0)], "region")
    with pytest.raises(ValueError, match="QuPath needs numbers: pass text as properties"):
        write_qupath_geojson(None, [(0, 0)], measurements=[{"label": "a"}])
    with pytest.raises(ValueError, match="pass object_type=, classes=, measurements= instead"):
        write_qupath_geojson(None, [(0, 0)], properties=[{"objectType": "tile"}])
    with pytest.raises(ValueError, match="got 2 classes for 1 geometries"):
        write_qupath_geojson(None, [(0, 0)], classes=["a", "b"])
    with pytest.raises(ValueError, match="a box .* or a point"):
        write_qupath_geojson(None, [(0, 0, 1)])
    with pytest.raises(ValueError, match="colour of class 'a'"):
        write_qupath_geojson(None, [(0, 0)], classes="a", colors={"a": (0, 0, 300)})
    with pytest.raises(ValueError, match="1 class_names for 2 channels"):
        regions_to_qupath_geojson(None, np.zeros((2, 1, 1)), 1, ["a"])
