"""The state one command invocation shares: config path, flags, plugins and config, loaded once."""

from __future__ import annotations

import attrs
import click

from ..config import Config, load_config
from ..plugins import LoadError, Plugins, load_plugins
from ..targets import TargetCheck, check_targets


@attrs.define
class App:
    config_path: str | None = None
    debug: bool = False
    #: `--metrics-port`, over the config's run.metrics_port.
    metrics_port: int | None = None
    _plugins: Plugins | None = None
    _config: Config | None = None

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = load_plugins()
        return self._plugins

    @property
    def config(self) -> Config:
        if self._config is None:
            config = load_config(self.config_path)
            if self.metrics_port is not None:
                run = attrs.evolve(config.run, metrics_port=self.metrics_port)
                config = attrs.evolve(config, run=run)
            self._config = config
        return self._config

    def target_checks(self, config: Config | None = None) -> list[TargetCheck]:
        """The checks of `config` (by default the one loaded for this command)."""
        plugins = self.plugins
        return check_targets(config or self.config, plugins.providers, plugins.load_errors())

    @staticmethod
    def plugins_load_error(name: str, error: str) -> LoadError:
        return LoadError(name=name, source="register_commands", error=error)


pass_app = click.make_pass_decorator(App, ensure=True)
