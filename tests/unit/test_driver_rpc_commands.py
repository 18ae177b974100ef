"""drivers/rpc_commands.py: pyasic's RPC clients list their commands once per class,
with the same result and the same checks as pyasic's own listing."""

from __future__ import annotations

import pytest
from pyasic.errors import APIWarning
from pyasic.rpc.bosminer import BOSMinerRPCAPI
from pyasic.rpc.luxminer import LUXMinerRPCAPI

from controller.catalog import find_model
from controller.config import MinerConfig
from drivers.pyasic_driver import PyasicDriver, pyasic_class_for
from drivers.rpc_commands import cache_command_list


@pytest.mark.parametrize("rpc_class", [LUXMinerRPCAPI, BOSMinerRPCAPI])
def test_the_cached_list_is_pyasics_own_listing_made_once(rpc_class: type) -> None:
    rpc = rpc_class("127.9.8.1")
    pyasic_listing = rpc_class("127.9.8.2").get_commands()
    cache_command_list(rpc)
    assert isinstance(rpc, rpc_class) and type(rpc) is not rpc_class
    assert rpc.commands == pyasic_listing and "stats" in rpc.commands
    assert rpc.commands is rpc.commands  # listed once, not on every call
    assert str(rpc.ip) == "127.9.8.1"  # its own attributes, untouched


def test_one_subclass_per_class_and_caching_twice_changes_nothing() -> None:
    first, second = LUXMinerRPCAPI("127.9.8.3"), LUXMinerRPCAPI("127.9.8.4")
    cache_command_list(first)
    cache_command_list(second)
    cached_class = type(first)
    assert type(second) is cached_class
    cache_command_list(first)
    assert type(first) is cached_class
    assert cached_class.__mro__[1] is LUXMinerRPCAPI


def test_an_unknown_command_is_still_removed_with_pyasics_warning() -> None:
    rpc = LUXMinerRPCAPI("127.9.8.5")
    cache_command_list(rpc)
    with pytest.warns(APIWarning, match="no_such_command"):
        assert rpc._check_commands("stats", "no_such_command") == ["stats"]


def test_something_that_is_not_a_pyasic_client_is_left_alone() -> None:
    class Double:
        pass

    double = Double()
    cache_command_list(double)
    assert type(double) is Double


@pytest.mark.parametrize("firmware", ["luxos", "braiins"])
def test_the_driver_caches_the_listing_of_the_miner_it_adopts(firmware: str) -> None:
    cls = pyasic_class_for("Antminer S19j Pro", firmware)
    assert cls is not None
    driver = PyasicDriver(
        MinerConfig(address="127.9.8.6", model="Antminer S19j Pro", firmware=firmware),  # type: ignore[arg-type]
        model=find_model("Antminer S19j Pro", firmware),
    )
    rpc = driver._miner.rpc
    assert rpc.commands is rpc.commands
    assert rpc.commands == type(rpc).__mro__[1]("127.9.8.7").get_commands()
