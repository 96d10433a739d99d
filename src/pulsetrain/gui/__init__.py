"""The live web GUI: scenes of panels (detector image, profiles, trends, counters, devices).

``pulsetrain gui --topology FILE`` serves the pages; the heavy image work is done once per train
by the :class:`~pulsetrain.devices.preview.PreviewAssembler` device.  See ``docs/gui.md``.
"""

from pulsetrain.gui.app import GuiServer, SceneSession
from pulsetrain.gui.backend import GuiBackend, OutputTap, TapFrame
from pulsetrain.gui.scene import PANEL_TYPES, Panel, Scene, auto_scene, load_scene, scene_from_dict

__all__ = [
    "PANEL_TYPES",
    "GuiBackend",
    "GuiServer",
    "OutputTap",
    "Panel",
    "Scene",
    "SceneSession",
    "TapFrame",
    "auto_scene",
    "load_scene",
    "scene_from_dict",
]
