"""Synthetic data generators.

Pyramidal whole-slide TIFFs, xView3-style SAR scenes and the context-dependent task of
``benchmarks/context_task.py``.
"""

from .context_task import (
    ContextTaskDataset,
    ContextTaskSpec,
    render_context_task,
    sample_context_task,
    swap_marks,
)
from .sar import SceneInfo, make_sar_scene, make_sar_scenes
from .slides import SlideInfo, make_slide, make_slides, render_slide_tile

__all__ = [
    "ContextTaskDataset",
    "ContextTaskSpec",
    "SceneInfo",
    "SlideInfo",
    "make_sar_scene",
    "make_sar_scenes",
    "make_slide",
    "make_slides",
    "render_slide_tile",
    "render_context_task",
    "sample_context_task",
    "swap_marks",
]
