"""Braiins OS+ "BOSer": cgminer JSON RPC on 4028 plus gRPC on 50051.

The gRPC services are pyasic's own betterproto ``*ServiceBase`` classes, served
with grpclib. ``Login`` hands out the token in the initial-metadata header
``authorization`` (where pyasic reads it); every other call must carry it or
gets UNAUTHENTICATED (pyasic then logs in again). Power targets are exact watts,
clamped to the model's range. Faults (blackhole, slow, malformed) apply to gRPC
calls as well as to the RPC port.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import grpclib.server
from grpclib import GRPCError
from grpclib.const import Status
from pyasic.web.braiins_os.proto.braiins.bos.v1 import (
    ActionsServiceBase,
    AuthenticationServiceBase,
    BosVersion,
    ConfigurationServiceBase,
    CoolingServiceBase,
    FanState,
    GetCoolingStateRequest,
    GetCoolingStateResponse,
    GetHashboardsRequest,
    GetHashboardsResponse,
    GetLocateDeviceStatusRequest,
    GetMinerConfigurationRequest,
    GetMinerConfigurationResponse,
    GetMinerDetailsRequest,
    GetMinerDetailsResponse,
    GetMinerStatsRequest,
    GetMinerStatsResponse,
    GetPerformanceModeRequest,
    GetPoolGroupsRequest,
    GetPoolGroupsResponse,
    GigaHashrate,
    Hashboard,
    LocateDeviceStatusResponse,
    LoginRequest,
    LoginResponse,
    MinerIdentity,
    MinerPowerStats,
    MinerServiceBase,
    PauseMiningRequest,
    PauseMiningResponse,
    PerformanceMode,
    PerformanceServiceBase,
    Pool,
    PoolConfiguration,
    PoolGroup,
    PoolGroupConfiguration,
    PoolServiceBase,
    PoolStats,
    Power,
    PowerTargetMode,
    Quota,
    RealHashrate,
    ResumeMiningRequest,
    ResumeMiningResponse,
    SetLocateDeviceStatusRequest,
    SetPowerTargetRequest,
    SetPowerTargetResponse,
    Temperature,
    TemperatureSensor,
    TunerConfiguration,
    TunerMode,
    TunerPerformanceMode,
    WorkSolverStats,
)

from simulators.miners import faults as f
from simulators.miners.miner import SimMiner
from simulators.miners.rpc_server import RpcListener

GRPC_PORT = 50051
BOSER_VERSION = "boser-buildroot 0.1.0-0ce150e9"
BOS_VERSION = "2024-09-09-0-0ce150e9-24.08-plus"
API_VERSION = "3.7"
BOARDS = 3
CHIPS_PER_BOARD = 126
FANS = 4
POOL_URL = "stratum+tcp://pool.invalid:3333"
LOGIN_PATH = "/braiins.bos.v1.AuthenticationService/Login"


# ------------------------------------------------------------------ RPC 4028


def _status(code: int, msg: str, ok: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "STATUS": "S" if ok else "E",
            "When": int(time.time()),
            "Code": code,
            "Msg": msg,
            "Description": f"BOSer {BOSER_VERSION}",
        }
    ]


class BoserRpc:
    """The cgminer-compatible RPC commands BOSer answers (read-only)."""

    def __init__(self, miner: SimMiner) -> None:
        self.miner = miner
        self._commands: dict[str, Callable[[], dict[str, Any]]] = {
            "version": self._version,
            "devdetails": self._devdetails,
            "summary": self._summary,
            "devs": self._devs,
            "tunerstatus": self._tunerstatus,
        }

    def handle(self, command: str, parameter: str | None) -> dict[str, Any]:
        method = self._commands.get(command)
        if method is None:
            return {"STATUS": _status(14, "Invalid command", ok=False), "id": 1}
        return method()

    def _version(self) -> dict[str, Any]:
        return {
            "STATUS": _status(22, "BOSer versions"),
            "VERSION": [{"API": API_VERSION, "BOSer": BOSER_VERSION}],
            "id": 1,
        }

    def _devdetails(self) -> dict[str, Any]:
        return {
            "STATUS": _status(69, "Device Details"),
            "DEVDETAILS": [
                {
                    "DEVDETAILS": board,
                    "Name": "",
                    "ID": board,
                    "Driver": "",
                    "Kernel": "",
                    "Model": f"Bitmain {self.miner.model.model}",
                    "Device Path": "",
                    "Chips": CHIPS_PER_BOARD,
                }
                for board in range(BOARDS)
            ],
            "id": 1,
        }

    def _summary(self) -> dict[str, Any]:
        mhs = self.miner.hashrate_ths() * 1e6
        uptime = self.miner.physics.uptime_seconds(self.miner.now())
        return {
            "STATUS": _status(11, "Summary"),
            "SUMMARY": [
                {"Elapsed": uptime, "MHS av": round(mhs, 1), "MHS 5s": round(mhs, 1),
                 "MHS 1m": round(mhs, 1), "MHS 5m": round(mhs, 1), "MHS 15m": round(mhs, 1),
                 "Accepted": 0, "Rejected": 0, "Hardware Errors": 0}
            ],
            "id": 1,
        }

    def _devs(self) -> dict[str, Any]:
        mhs = round(self.miner.hashrate_ths() * 1e6 / BOARDS, 1)
        return {
            "STATUS": _status(9, f"{BOARDS} ASC(s)"),
            "DEVS": [
                {"ASC": board, "Name": "", "ID": board + 1, "Enabled": "Y", "Status": "Alive",
                 "MHS av": mhs, "MHS 5s": mhs, "MHS 1m": mhs, "MHS 5m": mhs, "MHS 15m": mhs}
                for board in range(BOARDS)
            ],
            "id": 1,
        }

    def _tunerstatus(self) -> dict[str, Any]:
        miner = self.miner
        status = "Testing performance profile" if miner.is_booting else "Stable"
        return {
            "STATUS": _status(99, "Tuner Status"),
            "TUNERSTATUS": [
                {
                    "PowerLimit": miner.power_target_watts,
                    "ApproximateMinerPowerConsumption": round(miner.reported_watts()),
                    "TunerChainStatus": [
                        {"HashchainIndex": board, "Status": status,
                         "PowerLimitWatt": miner.power_target_watts // BOARDS}
                        for board in range(BOARDS)
                    ],
                }
            ],
            "id": 1,
        }


# ---------------------------------------------------------------- gRPC 50051


class BoserState:
    """What BOSer keeps beside the physics: the auth token, the locate LED."""

    def __init__(self, miner: SimMiner) -> None:
        self.miner = miner
        self.token = secrets.token_hex(12)
        self.locate_enabled = False

    def new_token(self) -> None:
        self.token = secrets.token_hex(12)

    def clamp_watts(self, watts: int) -> int:
        model = self.miner.model
        return max(model.min_target_watts, min(model.max_target_watts, watts))


class _Auth(AuthenticationServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def login(self, login_request: LoginRequest) -> LoginResponse:
        return LoginResponse(token=self.state.token, timeout_s=3600)

    async def _rpc_login(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        response = await self.login(request)
        await stream.send_initial_metadata(metadata={"authorization": self.state.token})
        await stream.send_message(response)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = dict(super().__mapping__())
        handler = mapping[LOGIN_PATH]
        mapping[LOGIN_PATH] = grpclib.const.Handler(
            self._rpc_login, handler.cardinality, handler.request_type, handler.reply_type
        )
        return mapping


def _ghs(value: float) -> GigaHashrate:
    return GigaHashrate(gigahash_per_second=value)


class _Miner(MinerServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def get_miner_details(
        self, get_miner_details_request: GetMinerDetailsRequest
    ) -> GetMinerDetailsResponse:
        miner = self.state.miner
        uptime = miner.physics.uptime_seconds(miner.now())
        return GetMinerDetailsResponse(
            uid=miner.mac.replace(":", ""),
            miner_identity=MinerIdentity(name=miner.model.model, miner_model=miner.model.model),
            bos_version=BosVersion(current=BOS_VERSION, major="24.08", bos_plus=True),
            hostname=miner.hostname,
            mac_address=miner.mac,
            system_uptime=uptime,
            system_uptime_s=uptime,
            bosminer_uptime_s=uptime,
            sticker_hashrate=_ghs(miner.model.nameplate_ths * 1_000.0),
            serial_number=f"SIM{miner.mac.replace(':', '')}",
        )

    async def get_hashboards(
        self, get_hashboards_request: GetHashboardsRequest
    ) -> GetHashboardsResponse:
        miner = self.state.miner
        now = miner.now()
        physics = miner.physics
        board_ghs = physics.hashrate_ths(now) * 1_000.0 / BOARDS
        board_c = physics.board_temp_celsius(now)
        chip_c = physics.chip_temp_celsius(now)
        return GetHashboardsResponse(
            hashboards=[
                Hashboard(
                    id=str(n),
                    enabled=True,
                    chips_count=CHIPS_PER_BOARD,
                    board_temp=Temperature(degree_c=round(board_c, 1)),
                    highest_chip_temp=TemperatureSensor(
                        temperature=Temperature(degree_c=round(chip_c, 1))
                    ),
                    stats=WorkSolverStats(
                        real_hashrate=RealHashrate(last_5_s=_ghs(board_ghs), last_1_m=_ghs(board_ghs))
                    ),
                )
                for n in range(1, BOARDS + 1)
            ]
        )

    async def get_miner_stats(
        self, get_miner_stats_request: GetMinerStatsRequest
    ) -> GetMinerStatsResponse:
        miner = self.state.miner
        ghs = miner.hashrate_ths() * 1_000.0
        return GetMinerStatsResponse(
            pool_stats=PoolStats(),
            miner_stats=WorkSolverStats(real_hashrate=RealHashrate(last_5_s=_ghs(ghs))),
            power_stats=MinerPowerStats(
                approximated_consumption=Power(watt=round(miner.reported_watts()))
            ),
        )


def _performance_mode(watts: int) -> PerformanceMode:
    return PerformanceMode(
        tuner_mode=TunerPerformanceMode(power_target=PowerTargetMode(power_target=Power(watt=watts)))
    )


class _Performance(PerformanceServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def get_active_performance_mode(
        self, get_performance_mode_request: GetPerformanceModeRequest
    ) -> PerformanceMode:
        return _performance_mode(self.state.miner.power_target_watts)

    async def set_power_target(
        self, set_power_target_request: SetPowerTargetRequest
    ) -> SetPowerTargetResponse:
        watts = self.state.clamp_watts(int(set_power_target_request.power_target.watt))
        self.state.miner.set_power_target(watts)
        return SetPowerTargetResponse(power_target=Power(watt=watts))


class _Cooling(CoolingServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def get_cooling_state(
        self, get_cooling_state_request: GetCoolingStateRequest
    ) -> GetCoolingStateResponse:
        miner = self.state.miner
        now = miner.now()
        rpm = miner.physics.fan_rpm(now)
        return GetCoolingStateResponse(
            fans=[FanState(position=i, rpm=rpm) for i in range(FANS)],
            highest_temperature=TemperatureSensor(
                temperature=Temperature(degree_c=round(miner.physics.chip_temp_celsius(now), 1))
            ),
        )


class _Actions(ActionsServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def pause_mining(self, pause_mining_request: PauseMiningRequest) -> PauseMiningResponse:
        miner = self.state.miner
        already = miner.is_sleeping
        miner.stop()
        return PauseMiningResponse(already_paused=already)

    async def resume_mining(
        self, resume_mining_request: ResumeMiningRequest
    ) -> ResumeMiningResponse:
        miner = self.state.miner
        already = not miner.is_sleeping
        miner.resume()
        return ResumeMiningResponse(already_mining=already)

    async def get_locate_device_status(
        self, get_locate_device_status_request: GetLocateDeviceStatusRequest
    ) -> LocateDeviceStatusResponse:
        return LocateDeviceStatusResponse(enabled=self.state.locate_enabled)

    async def set_locate_device_status(
        self, set_locate_device_status_request: SetLocateDeviceStatusRequest
    ) -> LocateDeviceStatusResponse:
        self.state.locate_enabled = bool(set_locate_device_status_request.enable)
        return LocateDeviceStatusResponse(enabled=self.state.locate_enabled)


class _Pools(PoolServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def get_pool_groups(self, get_pool_groups_request: GetPoolGroupsRequest) -> GetPoolGroupsResponse:
        miner = self.state.miner
        return GetPoolGroupsResponse(
            pool_groups=[
                PoolGroup(
                    name="Default",
                    quota=Quota(value=1),
                    pools=[
                        Pool(uid="1", url=POOL_URL, user=f"hashgov.{miner.name}", enabled=True,
                             alive=True, active=not miner.is_sleeping,
                             stats=PoolStats(accepted_shares=1))
                    ],
                )
            ]
        )


class _Configuration(ConfigurationServiceBase):  # type: ignore[misc]  # pyasic is untyped
    def __init__(self, state: BoserState) -> None:
        self.state = state

    async def get_miner_configuration(
        self, get_miner_configuration_request: GetMinerConfigurationRequest
    ) -> GetMinerConfigurationResponse:
        miner = self.state.miner
        return GetMinerConfigurationResponse(
            pool_groups=[
                PoolGroupConfiguration(
                    uid="1",
                    name="Default",
                    quota=Quota(value=1),
                    pools=[PoolConfiguration(uid="1", url=POOL_URL, user=f"hashgov.{miner.name}",
                                             password="x", enabled=True)],
                )
            ],
            tuner=TunerConfiguration(
                enabled=True,
                tuner_mode=TunerMode.POWER_TARGET,
                power_target=Power(watt=miner.power_target_watts),
            ),
        )


# ------------------------------------------------------------ fault gateway

GrpcFunc = Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]


def _gated(state: BoserState, path: str, func: GrpcFunc) -> GrpcFunc:
    """Apply faults and the auth check before a gRPC method runs."""

    async def handler(stream: grpclib.server.Stream[Any, Any]) -> None:
        faults = state.miner.faults
        if faults.has(f.BLACKHOLE):
            await asyncio.Event().wait()  # never answers; cancelled when the server closes
        if faults.delay_seconds > 0:
            await asyncio.sleep(faults.delay_seconds)
        if faults.has(f.MALFORMED):
            raise GRPCError(Status.DATA_LOSS, "malformed reply (simulated fault)")
        if path != LOGIN_PATH:
            metadata: Any = stream.metadata
            token = metadata.get("authorization") if metadata else None
            if token != state.token:
                raise GRPCError(Status.UNAUTHENTICATED, "missing or stale token")
        await func(stream)

    return handler


class _Gateway:
    """All services of one miner behind the fault/auth gate, as one grpclib handler."""

    def __init__(self, state: BoserState) -> None:
        self.state = state
        services = (_Auth, _Miner, _Performance, _Cooling, _Actions, _Pools, _Configuration)
        self._mapping: dict[str, grpclib.const.Handler] = {}
        for cls in services:
            for path, h in cls(state).__mapping__().items():
                self._mapping[path] = grpclib.const.Handler(
                    _gated(state, path, h.func), h.cardinality, h.request_type, h.reply_type
                )

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


# ----------------------------------------------------------------- listeners


class _ConnectionClosingServer(grpclib.server.Server):
    """grpclib's server, except that close() also ends the connections clients hold.

    grpclib's close() stops the listener and cancels running calls but leaves each
    HTTP/2 connection up, so a client that keeps its connection (as hashgov's BOSer
    driver does) would still be served by a miner that is "unreachable" or
    rebooting. A BOSer that stops takes its connections with it: clients see them
    closed, as from a real miner that went away."""

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self._transports: set[asyncio.BaseTransport] = set()

    def _protocol_factory(self) -> Any:
        protocol: Any = super()._protocol_factory()
        made, lost = protocol.connection_made, protocol.connection_lost
        mine: list[asyncio.BaseTransport] = []

        def connection_made(transport: asyncio.BaseTransport) -> None:
            mine.append(transport)
            self._transports.add(transport)
            made(transport)

        def connection_lost(exc: BaseException | None) -> None:
            self._transports.difference_update(mine)  # a closed one is not held on to
            lost(exc)

        protocol.connection_made, protocol.connection_lost = connection_made, connection_lost
        return protocol

    def close(self) -> None:
        super().close()
        transports, self._transports = self._transports, set()
        for transport in transports:
            transport.close()


class BoserServers:
    """The listeners of a simulated BOSer miner: RPC 4028 and gRPC 50051."""

    def __init__(self, miner: SimMiner, grpc_port: int = GRPC_PORT) -> None:
        self.miner = miner
        self.grpc_port = grpc_port
        self.state = BoserState(miner)
        self.rpc = RpcListener(miner, BoserRpc(miner).handle)
        self._gateway = _Gateway(self.state)
        self._grpc: grpclib.server.Server | None = None

    async def start(self) -> None:
        await self.rpc.start()
        if self._grpc is None:
            server = _ConnectionClosingServer([self._gateway])
            try:
                await server.start(self.miner.address, self.grpc_port, reuse_address=True,
                                   backlog=64)
            except BaseException:
                await self.rpc.close()
                raise
            self._grpc = server

    async def close(self) -> None:
        await self.rpc.close()
        server, self._grpc = self._grpc, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=2.0)

    def on_reboot(self) -> None:
        self.state.new_token()
        self.state.locate_enabled = False
