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
            self._config = load_config(self.config_path)
        return self._config

    def target_checks(self, config: Config | None = None) -> list[TargetCheck]:
        """The checks of `config` (by default the one loaded for this command)."""
        plugins = self.plugins
        return check_targets(config or self.config, plugins.providers, plugins.load_errors())

    @staticmethod
    def plugins_load_error(name: str, error: str) -> LoadError:
        return LoadError(name=name, source="register_commands", error=error)


pass_app = click.make_pass_decorator(App, ensure=True)
