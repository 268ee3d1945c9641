"""A faithful local stand-in for the Z-Image-Turbo API (EvoLink), with no Dagster in it.

>>> from zimage_dagster.emulator import EmulatorServer, EmulatorConfig
>>> with EmulatorServer(EmulatorConfig(latency_s=0.1)) as emu:
...     import httpx
...     httpx.get(f"{emu.url}/v1/credits", headers={"Authorization": f"Bearer {emu.api_key}"}, trust_env=False).status_code
200
"""

from zimage_dagster.emulator.app import create_app
from zimage_dagster.emulator.config import EmulatorConfig, FailureRule, FaultRule
from zimage_dagster.emulator.server import EmulatorError, EmulatorProcess, EmulatorServer

__all__ = [
    "EmulatorConfig",
    "EmulatorError",
    "EmulatorProcess",
    "EmulatorServer",
    "FailureRule",
    "FaultRule",
    "create_app",
]
