"""Synthetic data generators: pyramidal whole-slide TIFFs and xView3-style SAR scenes."""

from .sar import SceneInfo, make_sar_scene, make_sar_scenes
from .slides import SlideInfo, make_slide, make_slides, render_slide_tile

__all__ = [
    "SceneInfo",
    "SlideInfo",
    "make_sar_scene",
    "make_sar_scenes",
    "make_slide",
    "make_slides",
    "render_slide_tile",
]
