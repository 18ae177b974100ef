"""The listeners of a simulated LuxOS miner: RPC on TCP 4028 only."""

from __future__ import annotations

from simulators.miners.luxos import LuxosFirmware
from simulators.miners.miner import SimMiner
from simulators.miners.rpc_server import RpcListener


class LuxosServers:
    def __init__(self, miner: SimMiner) -> None:
        self.firmware = LuxosFirmware(miner)
        self.rpc = RpcListener(miner, self.firmware.handle)

    async def start(self) -> None:
        await self.rpc.start()

    async def close(self) -> None:
        await self.rpc.close()

    def on_reboot(self) -> None:
        self.firmware.on_reboot()
