"""Re-reads TF Serving's models.config (``--model_config_file_poll_wait_seconds``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tfmux.config import ConfigError, ModelConfig, load_tfs_config
from tfmux.core.manager import ModelManager
from tfmux.core.periodic import Periodic

log = logging.getLogger("tfmux.config_poller")


class ModelConfigFilePoller:
    """Every ``interval`` seconds, serves exactly the models of the file at ``path``.

    As TF Serving's poll: a file that cannot be read or parsed is logged and the models keep
    being served as they are; an unchanged file changes nothing. Models already served keep
    their load mode; new ones take ``load``. Owned by the server: ``start`` on its event loop,
    ``stop`` before unloading.
    """

    def __init__(self, manager: ModelManager, path: Path, interval: float, load: str) -> None:
        self._manager = manager
        self._path = path
        self._load = load
        self._periodic = Periodic(
            self.poll_once, interval, "tfmux-model-config-poller", f"polling {path}"
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def poll_once(self) -> None:
        """Read the file and serve its models (waits until new models have loaded)."""
        try:
            configs = load_tfs_config(self._path, self._load)
        except ConfigError as exc:
            log.error("Failed to read ModelServerConfig file: %s", exc)
            return
        current = {served.config.name: served.config for served in self._manager.models()}
        configs = [_keep_load_mode(config, current.get(config.name)) for config in configs]
        if {config.name: config for config in configs} == current:
            return  # unchanged: nothing to do
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._manager.reconfigure, configs)
        except Exception as exc:
            log.error("reloading %s failed: %s", self._path, exc)


def _keep_load_mode(config: ModelConfig, current: ModelConfig | None) -> ModelConfig:
    return config if current is None else config.model_copy(update={"load": current.load})
