"""A warehouse and a cold chain that behave like the real thing, with the ground truth to check stocktrace against.

``scenario`` validates the YAML world, ``world`` builds it, ``radio`` and ``delivery`` are the physics,
``hardware`` the devices writing the vendor formats in ``formats``, ``operations``, ``fleet`` and ``faults``
what happens, ``truth`` what really happened, ``run`` and ``load`` the entry points, ``check`` the comparison
with what stocktrace stored, ``cli`` the ``stocktrace simulate`` command. Nothing in stocktrace imports this.
"""
