"""Built-in devices: simulation, matching, bridge, processing, storage, analysis, feedback.

They are registered in the ``pulsetrain.devices`` entry-point group (see ``pyproject.toml``), so
topologies name them by class name; third-party packages add their own classes the same way.
"""
