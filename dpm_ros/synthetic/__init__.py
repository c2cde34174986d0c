"""Procedural dynamic scenes with ground truth for all eight DPM point maps (see ``pairs.py`` for conventions).

``make_pair(seed, height, width, n_objects, ...)`` gives one pair; ``SyntheticSequence`` a continuous sequence whose
frames and pairs share one scene; ``SceneConfig`` holds the generator's knobs.
"""
from .pairs import SyntheticSequence, make_pair, pair_from_renders
from .render import gl_available, render
from .scene import SceneConfig, random_scene

__all__ = ["make_pair", "SyntheticSequence", "SceneConfig", "random_scene", "render", "gl_available",
           "pair_from_renders"]
