"""BOSer gRPC over one HTTP/2 connection kept per miner, instead of one per call.

pyasic's ``BOSerWebAPI.send_command`` opens a new grpclib ``Channel`` for every
call: a TCP connect, the HTTP/2 handshake and fresh header tables, then a close.
That was most of a Braiins command's cost on both sides: per stop, 1.2 ms of the
controller's CPU and 1.1 ms of the miner simulator's with a new connection,
0.55 / 0.45 ms on a kept one (1,000 miners, one process each side). A 10,000-miner
drop sends thousands of stops and cuts, so it sheds about twice as fast.

:class:`KeptChannelWebAPI` is pyasic's own class with only ``send_command``
overridden (same stub, same messages, same re-login on UNAUTHENTICATED); pyasic
itself is not modified. The channel is closed after any failure that is not the
miner's own gRPC reply, so a retry always starts on a fresh connection: a kept
connection that died quietly costs one attempt, never a stuck miner.

Logging in goes over the kept connection too (pyasic opens one more for every
Login), and the driver does it ahead of need, alongside a read: see
``PyasicDriver._log_in_ahead``.

Every kept connection is a file descriptor for the life of the process, so they
are rationed: :data:`drivers.open_files.KEPT_CONNECTIONS` allows what RLIMIT_NOFILE leaves
after the descriptors reserved for everything else; a miner that finds none free uses pyasic's
connection per call, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from grpclib import GRPCError, Status
from grpclib.client import Channel
from grpclib.const import Cardinality
from pyasic.errors import APIError
from pyasic.web.braiins_os.boser import BOSerWebAPI, BOSMinerGRPCStub
from pyasic.web.braiins_os.proto.braiins.bos.v1 import LoginRequest, LoginResponse

from drivers.open_files import KEPT_CONNECTIONS, ConnectionAllowance


class KeptChannelWebAPI(BOSerWebAPI):  # type: ignore[misc]  # pyasic is untyped here
    """pyasic's BOSer gRPC client on one connection kept between calls."""

    LOGIN_PATH = "/braiins.bos.v1.AuthenticationService/Login"

    def __init__(self, ip: str, allowance: ConnectionAllowance = KEPT_CONNECTIONS) -> None:
        super().__init__(ip)
        self._allowance = allowance
        self._channel: Channel | None = None

    @classmethod
    def replacing(
        cls, web: BOSerWebAPI, allowance: ConnectionAllowance = KEPT_CONNECTIONS
    ) -> KeptChannelWebAPI:
        """A kept-connection client with ``web``'s address, port and credentials."""
        kept = cls(web.ip, allowance)
        kept.port, kept.username, kept.pwd = web.port, web.username, web.pwd
        kept.token, kept._auth_time = web.token, web._auth_time
        return kept

    @property
    def connected(self) -> bool:
        return self._channel is not None

    async def send_command(
        self,
        command: str,
        ignore_errors: bool = False,
        allow_warning: bool = True,
        privileged: bool = False,
        **parameters: Any,
    ) -> dict[str, Any]:
        channel = self._channel_or_none()
        if channel is None:  # none to spare: pyasic's connection per call
            return await super().send_command(  # type: ignore[no-any-return]
                command, ignore_errors, allow_warning, privileged, **parameters
            )
        metadata = [("authorization", await self.auth())] if privileged else []
        endpoint = getattr(BOSMinerGRPCStub(channel), command, None)
        if endpoint is None:
            if not ignore_errors:
                raise APIError(f"Command not found - {command}")
            return {}
        try:
            with self._kept_unless_broken():
                try:
                    return (await endpoint(parameters["message"], metadata=metadata)).to_pydict()  # type: ignore[no-any-return]
                except GRPCError as exc:
                    if exc.status != Status.UNAUTHENTICATED:
                        raise
                    await self._get_auth()  # the token expired early: log in once, as pyasic does
                    metadata = [("authorization", await self.auth())]
                    return (await endpoint(parameters["message"], metadata=metadata)).to_pydict()  # type: ignore[no-any-return]
        except (GRPCError, ConnectionError) as exc:  # as pyasic reports them
            raise APIError(f"gRPC command failed - {command}") from exc

    async def _get_auth(self) -> str | None:
        """pyasic's Login, over the kept connection: the token comes in the reply's
        initial metadata. Sets ``token`` and ``_auth_time`` as pyasic does, so its
        ``auth()`` keeps deciding when a token is too old. A login opens the
        connection if none is up; it is closed again after a failure that is not
        the miner's own gRPC reply, as for a command."""
        channel = self._channel_or_none()
        if channel is None:  # none to spare: pyasic's own login on its own connection
            return await super()._get_auth()  # type: ignore[no-any-return]
        request = LoginRequest(username=self.username, password=self.pwd)
        with self._kept_unless_broken():
            async with channel.request(
                self.LOGIN_PATH, Cardinality.UNARY_UNARY, LoginRequest, LoginResponse
            ) as stream:
                await stream.send_message(request, end=True)
                await stream.recv_initial_metadata()
                metadata = stream.initial_metadata
                token = metadata.get("authorization") if metadata is not None else None
                await stream.recv_message()
                await stream.recv_trailing_metadata()  # a refused login raises GRPCError here
        if isinstance(token, str):
            self.token, self._auth_time = token, datetime.now()
            return token
        return None

    @contextlib.contextmanager
    def _kept_unless_broken(self) -> Iterator[None]:
        """One call on the kept connection. A gRPC error the miner sent back leaves
        the connection up; anything else (refused, reset, a timeout or cancel
        mid-call: the stream state is unknown) closes it, so the retry and every
        later call start on a fresh one."""
        try:
            yield
        except GRPCError:
            raise
        except BaseException:
            self._drop()
            raise

    def _channel_or_none(self) -> Channel | None:
        if self._channel is None and self._allowance.take():
            self._channel = Channel(self.ip, self.port)
        return self._channel

    def _drop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._allowance.give_back()

    def close(self) -> None:
        """Close the kept connection (the next call opens a new one)."""
        self._drop()
