"""pyasic's RPC clients, with the list of commands they accept computed once per class.

Before every ``multicommand`` (every LuxOS ``get_data``, so every LuxOS read and
command readback) pyasic's ``BaseMinerRPCAPI._check_commands`` lists the client's
commands from scratch: ``dir()`` of the client, and for each of its ~100 names
``dir()`` of the base class again. That listing was ~1 ms of the controller's CPU
per call, about half of a LuxOS read (1,000 LuxOS sims, cProfile). The list
depends only on the class, so :func:`cache_command_list` gives a client a
subclass whose ``commands`` is pyasic's own listing, made once per class and
kept. Nothing else changes; pyasic itself is not modified.
"""

from __future__ import annotations

from typing import Any

_SUBCLASSES: dict[type[Any], type[Any]] = {}


def cache_command_list(rpc: Any) -> None:
    """Make ``rpc`` (a pyasic RPC client) list its commands once per class.

    Anything without pyasic's ``get_commands`` (a test double) is left alone."""
    cls = type(rpc)
    if cls in _SUBCLASSES.values() or not callable(getattr(cls, "get_commands", None)):
        return
    subclass = _SUBCLASSES.get(cls)
    if subclass is None:
        subclass = _SUBCLASSES[cls] = _listing_once(cls)
    rpc.__class__ = subclass  # same attributes, one property added: no copy to go stale


def _listing_once(cls: type[Any]) -> type[Any]:
    listed: list[str] | None = None

    def commands(self: Any) -> list[str]:
        nonlocal listed
        if listed is None:  # pyasic's own listing ("commands" itself is excluded by name)
            listed = list(cls.get_commands(self))
        return listed

    return type(cls.__name__, (cls,), {"commands": property(commands), "__module__": __name__})
