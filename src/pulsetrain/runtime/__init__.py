"""The runtime: how devices live, talk and are run.

``channels`` (point-to-point train channels over ZeroMQ, with ``shmem`` for large arrays between
processes of one host) ← ``device`` (the ``Device`` base class and its public API) ← ``server``
(a device-server process and its authenticated control endpoint, ``control`` is its client) ←
``topology`` (a TOML file of servers, devices and connections, validated before anything
starts) and ``supervisor`` (``pulsetrain run``: starts, watches and stops a topology;
``lifetime`` makes servers die with it, ``runstate`` is its state file and lock, ``ports``
the one home of port choice and checks).

The package's ``__init__`` imports nothing from here until a name such as ``Device`` is asked
for (``from pulsetrain import Device``): ``import pulsetrain`` stays cheap.
"""
