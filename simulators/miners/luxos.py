"""LuxOS (LUXminer) RPC command set, as pyasic 0.79 reads and drives it.

Power is set through *profiles* (one per ``model.targets_watts`` entry): a
power limit is quantised by pyasic to the highest profile at or below it.
Like the real firmware, ``profileset`` is refused while ATM (automatic thermal
management) is enabled, so pyasic's disable-set-enable dance is exercised.
Privileged commands (``atmset``, ``profileset``, ``curtail``) need the session
id from ``session``/``logon`` as their first parameter.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from simulators.miners.miner import SimMiner

LUXMINER_VERSION = "2024.6.18.181313-3afaf1f"
MINER_VERSION = "2024.6.18.181313"
API_VERSION = "3.7"
DESCRIPTION = f"LUXminer {MINER_VERSION}"
BOARDS = 3
FANS = 4
CHIPS_PER_BOARD = 126


def profile_name(watts: int) -> str:
    return f"{watts}W"


def _status(code: int, msg: str, ok: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "STATUS": "S" if ok else "E",
            "When": int(time.time()),
            "Code": code,
            "Msg": msg,
            "Description": DESCRIPTION,
        }
    ]


def _error(msg: str, code: int = 14) -> dict[str, Any]:
    return {"STATUS": _status(code, msg, ok=False), "id": 1}


class LuxosFirmware:
    """Answers LuxOS RPC commands for one miner."""

    def __init__(self, miner: SimMiner) -> None:
        self.miner = miner
        model = miner.model
        self.profiles_watts: tuple[int, ...] = model.targets_watts
        self.profile = profile_name(model.max_target_watts)
        self.atm_enabled = True
        self.session_id = ""
        self._static_profiles = [
            {
                "Profile Name": profile_name(watts),
                "Watts": watts,
                "Hashrate": round(model.hashrate_ths_at(watts), 2),
                "IsTuned": True,
                "Frequency": 100 + watts // 10,
                "Voltage": round(11.0 + watts / 1_000.0, 2),
            }
            for watts in self.profiles_watts
        ]
        self._by_name = {profile_name(w): w for w in self.profiles_watts}
        self._commands: dict[str, Callable[[list[str]], dict[str, Any]]] = {
            "version": self._version,
            "devdetails": self._devdetails,
            "summary": self._summary,
            "stats": self._stats,
            "power": self._power,
            "config": self._config,
            "profiles": self._profiles,
            "fans": self._fans,
            "tempctrl": self._tempctrl,
            "pools": self._pools,
            "groups": self._groups,
            "atm": self._atm,
            "session": self._session,
            "logon": self._logon,
            "logoff": self._logoff,
            "atmset": self._atmset,
            "profileset": self._profileset,
            "curtail": self._curtail,
        }

    # ---------------------------------------------------------------- dispatch

    def handle(self, command: str, parameter: str | None) -> dict[str, Any]:
        method = self._commands.get(command)
        if method is None:
            return _error("Invalid command", 14)
        args = [] if parameter is None else [a.strip() for a in parameter.split(",")]
        return method(args)

    # ------------------------------------------------------------------ reads

    def _version(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(22, "LUXminer versions"),
            "VERSION": [
                {
                    "API": API_VERSION,
                    "LUXminer": LUXMINER_VERSION,
                    "Miner": MINER_VERSION,
                    "CompileTime": "Tue Jun 18 18:13:13 UTC 2024",
                    "Type": self.miner.model.model,
                }
            ],
            "id": 1,
        }

    def _devdetails(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(69, "Device Details"),
            "DEVDETAILS": [
                {
                    "DEVDETAILS": board,
                    "Name": "ASC",
                    "ID": board,
                    "Driver": "luxminer",
                    "Kernel": "",
                    "Model": self.miner.model.model,
                    "Device Path": "",
                }
                for board in range(BOARDS)
            ],
            "id": 1,
        }

    def _summary(self, _: list[str]) -> dict[str, Any]:
        ghs = self.miner.hashrate_ths() * 1_000.0
        uptime = self.miner.physics.uptime_seconds(self.miner.now())
        return {
            "STATUS": _status(11, "Summary"),
            "SUMMARY": [
                {"Elapsed": uptime, "GHS 5s": round(ghs, 2), "GHS av": round(ghs, 2),
                 "Accepted": 0, "Rejected": 0, "Hardware Errors": 0}
            ],
            "id": 1,
        }

    def _stats(self, _: list[str]) -> dict[str, Any]:
        miner = self.miner
        now = miner.now()
        physics = miner.physics
        board_ghs = physics.hashrate_ths(now) * 1_000.0 / BOARDS
        board_c = round(physics.board_temp_celsius(now))
        chip_c = round(physics.chip_temp_celsius(now))
        detail: dict[str, Any] = {
            "Elapsed": physics.uptime_seconds(now),
            "total_rateideal": round(miner.model.hashrate_ths_at(physics.target_watts) * 1_000.0, 2),
            "rate_unit": "GH",
            "miner_count": BOARDS,
            "fan_num": FANS,
        }
        for n in range(1, BOARDS + 1):
            detail[f"chain_rate{n}"] = f"{board_ghs:.2f}"
            detail[f"chain_acn{n}"] = CHIPS_PER_BOARD
            detail[f"temp_chip{n}"] = f"{chip_c - 2}-{chip_c}-{chip_c - 1}-{chip_c + 1}"
            detail[f"temp_pcb{n}"] = f"{board_c - 1}-{board_c}-{board_c}-{board_c + 1}"
        return {
            "STATUS": _status(70, "LUXminer stats"),
            "STATS": [{"STATS": 0, "ID": "luxminer0", "Elapsed": detail["Elapsed"]}, detail],
            "id": 1,
        }

    def _power(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(330, "Power"),
            "POWER": [{"Watts": round(self.miner.reported_watts()), "PSU": True}],
            "id": 1,
        }

    def _config(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(33, "LUXminer config"),
            "CONFIG": [
                {
                    "Profile": self.profile,
                    "RedLed": "off",
                    "MACAddr": self.miner.mac,
                    "Hostname": self.miner.hostname,
                    "IsAtmEnabled": self.atm_enabled,
                    "IsPowerSupplyOn": True,
                    "CurtailMode": "Sleep" if self.miner.is_sleeping else "None",
                }
            ],
            "id": 1,
        }

    def _profiles(self, _: list[str]) -> dict[str, Any]:
        return {"STATUS": _status(48, "Profiles"), "PROFILES": self._static_profiles, "id": 1}

    def _fans(self, _: list[str]) -> dict[str, Any]:
        rpm = self.miner.physics.fan_rpm(self.miner.now())
        speed = round(100 * rpm / 6_000)
        return {
            "STATUS": _status(202, f"{FANS} Fan(s)"),
            "FANS": [{"ID": i, "RPM": rpm, "Speed": speed} for i in range(FANS)],
            "FANCTRL": [{"MinFans": 1, "Mode": "Auto"}],
            "id": 1,
        }

    def _tempctrl(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(200, "Temperature control"),
            "TEMPCTRL": [{"Mode": "Auto", "Target": 75, "Hot": 85, "Dangerous": 95}],
            "id": 1,
        }

    def _pools(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(7, "1 Pool(s)"),
            "POOLS": [
                {
                    "POOL": 0,
                    "URL": "stratum+tcp://pool.invalid:3333",
                    "User": f"hashgov.{self.miner.name}",
                    "Status": "Alive",
                    "Stratum Active": True,
                    "Accepted": 0,
                    "Rejected": 0,
                    "Get Failures": 0,
                    "Remote Failures": 0,
                    "GROUP": 0,
                }
            ],
            "id": 1,
        }

    def _groups(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(312, "1 Group(s)"),
            "GROUPS": [{"GROUP": 0, "Name": "Default", "Quota": 1}],
            "id": 1,
        }

    def _atm(self, _: list[str]) -> dict[str, Any]:
        return {
            "STATUS": _status(339, "ATM configuration values"),
            "ATM": [{"Enabled": self.atm_enabled, "MaxProfile": "", "MinProfile": "",
                     "PostRampMinutes": 15, "StartupMinutes": 15, "TempWindow": 7}],
            "id": 1,
        }

    # --------------------------------------------------------------- sessions

    def _session_reply(self, code: int, msg: str) -> dict[str, Any]:
        return {"STATUS": _status(code, msg), "SESSION": [{"SessionID": self.session_id}], "id": 1}

    def _session(self, _: list[str]) -> dict[str, Any]:
        return self._session_reply(36, "Session")

    def _logon(self, _: list[str]) -> dict[str, Any]:
        if not self.session_id:
            self.session_id = secrets.token_hex(4)
        return self._session_reply(33, "Logon")

    def _logoff(self, args: list[str]) -> dict[str, Any]:
        if not self._authorised(args):
            return _error("Invalid session id", 45)
        self.session_id = ""
        return {"STATUS": _status(34, "Logoff"), "id": 1}

    def _authorised(self, args: list[str]) -> bool:
        return bool(self.session_id) and bool(args) and args[0] == self.session_id

    # ---------------------------------------------------------------- control

    def _atmset(self, args: list[str]) -> dict[str, Any]:
        if not self._authorised(args):
            return _error("Invalid session id", 45)
        for arg in args[1:]:
            key, _, value = arg.partition("=")
            if key == "enabled":
                if value not in ("true", "false"):
                    return _error(f"Invalid value for enabled: {value}", 340)
                self.atm_enabled = value == "true"  # config, not power: never ignored
        return {"STATUS": _status(340, "Advanced Thermal Management configuration updated"),
                "id": 1}

    def _profileset(self, args: list[str]) -> dict[str, Any]:
        if not self._authorised(args):
            return _error("Invalid session id", 45)
        if len(args) < 2 or args[1] not in self._by_name:
            return _error(f"Invalid profile: {args[1] if len(args) > 1 else ''}", 44)
        if self.atm_enabled:
            return _error("Cannot set profile while ATM is enabled", 44)
        name = args[1]
        if not self.miner.faults.has("ignore_commands"):
            self.profile = name
        self.miner.set_power_target(self._by_name[name])
        return {
            "STATUS": _status(43, "Profile set"),
            "PROFILE": [{"Profile": name, "Board": -1}],
            "id": 1,
        }

    def _curtail(self, args: list[str]) -> dict[str, Any]:
        if not self._authorised(args):
            return _error("Invalid session id", 45)
        mode = args[1] if len(args) > 1 else ""
        if mode == "sleep":
            self.miner.stop()
        elif mode == "wakeup":
            self.miner.resume()
        else:
            return _error(f"Invalid curtail mode: {mode}", 60)
        return {"STATUS": _status(60, f"Curtail {mode}"), "id": 1}

    def on_reboot(self) -> None:
        """After a power-cycle: default profile, ATM on (sessions survive for simplicity)."""
        self.profile = profile_name(self.miner.model.max_target_watts)
        self.atm_enabled = True
