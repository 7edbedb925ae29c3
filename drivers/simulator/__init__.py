"""A simulated pump programmer speaking PTP/1 as the device, for tests and demos.

``physics`` (pure pump model) -> ``scenarios`` (scripted pumps by name) ->
``device`` (sans-IO programmer) -> ``line`` (clean or noisy wire) ->
``server`` (pty / TCP shell) <- ``cli`` (``--pump``, ``--speed``, ...).
"""
