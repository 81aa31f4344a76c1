"""The `csm-offload` command line: a click group, plugin commands, and one error policy.

Errors a user can fix print one sentence and exit 2; provider failures exit 1; a traceback is
shown only with `--debug`. Everything printed passes the scrubber (`csm_offload.scrub`).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

import click

from .. import scrub
from ..errors import CsmOffloadError
from .app import App, pass_app
from .book import book_command
from .costs import costs_command
from .doctor import doctor_command
from .estimate import estimate_command
from .info import config_group, plugins_command, providers_command
from .queue import queue_command
from .synth import synth_command
from .worker import worker_command

__all__ = ["App", "cli", "main", "pass_app"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="csm-offload")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CSM_OFFLOAD_CONFIG",
    help="Config file (default: ./csm-offload.yaml, else the built-in config).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    envvar="CSM_OFFLOAD_METRICS_PORT",
    help="Serve Prometheus metrics on 127.0.0.1 at this port (over run.metrics_port).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, metrics_port: int | None) -> None:
    """Generate speech with Sesame CSM on the cheapest healthy GPU, local or in the cloud."""
    app = ctx.ensure_object(App)
    app.config_path = config_path
    app.debug = debug
    app.metrics_port = metrics_port


cli.add_command(plugins_command)
cli.add_command(providers_command)
cli.add_command(config_group)
cli.add_command(synth_command)
cli.add_command(estimate_command)
cli.add_command(costs_command)
cli.add_command(doctor_command)
cli.add_command(book_command)
cli.add_command(worker_command)
cli.add_command(queue_command)


def _register_plugin_commands(app: App) -> None:
    for plugin in app.plugins.pm.get_plugins():
        impl = getattr(plugin, "register_commands", None)
        if impl is None or not hasattr(impl, "csm_offload_impl"):
            continue
        try:
            impl(cli=cli)
        except Exception as exc:  # a broken plugin must not take the CLI down
            name = app.plugins.pm.get_name(plugin)
            app.plugins.errors.append(
                app.plugins_load_error(name, f"register_commands failed: {exc}")
            )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `csm-offload` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    scrub.register_env()
    # Every byte the command prints passes the scrubber: a provider's error body, a plugin's
    # health detail or a traceback that quotes a key is masked wherever it comes from.
    with scrub.scrubbed_std_streams():
        code = _run(args, debug="--debug" in args)
    sys.exit(code)


def _error(message: str) -> None:
    click.secho(scrub.scrub(message), fg="red", err=True)


def _traceback() -> None:
    click.echo(scrub.scrub(traceback.format_exc()).rstrip("\n"), err=True)


def _run(args: list[str], debug: bool) -> int:
    app = App(debug=debug)
    try:
        _register_plugin_commands(app)
        # Without standalone mode click hands back an `Exit`'s code instead of raising it.
        result = cli.main(args=args, prog_name="csm-offload", obj=app, standalone_mode=False)
    except CsmOffloadError as exc:
        if debug:
            _traceback()
        _error(f"error: {exc}")
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        if debug:
            _traceback()
            return 1
        _error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
