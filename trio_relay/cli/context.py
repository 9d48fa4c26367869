"""What every command shares: the options that say where the broker is and how to print,
the context object that carries them, and the one place errors become exit codes.

The shared options are declared once, here. The group takes them (``trio-relay --json
ps``) and so does every command, after its name (``trio-relay ps --json``), through
:class:`RelayCommand`; what a command is given on its command line overrides what the
group was given.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
import trio
from click.core import ParameterSource

from trio_relay.cli.render import emit
from trio_relay.errors import RelayError, RemoteError, code_of

T = TypeVar("T")

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
# A stable error code (trio_relay.errors) to the exit code README documents; any other is 1.
EXIT_CODES = {
    "bad_request": EXIT_USAGE,
    "bad_address": EXIT_USAGE,
    "state_dir": EXIT_USAGE,
    "unreachable": EXIT_UNREACHABLE,
}
# The codes that mean the operation reached the agent: said as `Agent error: ...`.
AGENT_ERROR_CODES = frozenset({"worker_error", "worker_exited", "timeout"})

SHARED_OPTIONS = (
    click.Option(
        ["--state-dir"],
        type=click.Path(file_okay=False),
        help="The state directory (default: ./.trio-relay).",
    ),
    click.Option(
        ["--url"],
        envvar="TRIO_RELAY_URL",
        help="The broker's URL (default: from the state directory).",
    ),
    click.Option(
        ["--token"],
        envvar="TRIO_RELAY_TOKEN",
        help="The broker's token (default: from the state directory).",
    ),
    click.Option(["--json", "as_json"], is_flag=True, help="Print the result as JSON."),
)
ALL_SHARED = tuple(option.name for option in SHARED_OPTIONS)


def die(message: str, *, agent: bool = False, exit_code: int = EXIT_FAILED) -> NoReturn:
    """Print ``Error: message`` (``Agent error:`` if ``agent``) to stderr and exit."""
    click.echo(f"{'Agent error' if agent else 'Error'}: {message}", err=True)
    sys.exit(exit_code)


def fail(exc: RelayError, message: str | None = None) -> NoReturn:
    """Exit as ``exc``'s stable code says (see EXIT_CODES), printing ``message`` or what
    ``exc`` says."""
    code = code_of(exc)
    if message is None:
        message = exc.message if isinstance(exc, RemoteError) else str(exc)
    die(message, agent=code in AGENT_ERROR_CODES, exit_code=EXIT_CODES.get(code, EXIT_FAILED))


@dataclass
class Settings:
    """The context object: where the broker is, and whether to print JSON."""

    state_dir: str | None = None
    url: str | None = None
    token: str | None = None
    as_json: bool = False

    def call(self, action: Callable[[Any], Awaitable[T]]) -> T:
        """Connect, run ``action(client)`` in a fresh Trio run and return what it returns.

        Errors: a RelayError (no broker, a bad address, the broker's own error) exits
        through :func:`fail`. KeyboardInterrupt propagates to the caller.
        """
        from trio_relay.client import open_client  # imported late: `--help` stays quick

        async def run() -> T:
            async with open_client(self.url, self.token, self.state_dir) as client:
                return await action(client)

        try:
            return trio.run(run)
        except RelayError as exc:
            fail(exc)

    def emit(self, result: Any, human: Callable[[Any], None] | None = None) -> None:
        """Print ``result`` as JSON with --json, else with ``human``."""
        emit(result, self.as_json, human)

    def show(self, action: Callable[[Any], Awaitable[Any]], human: Callable[[Any], None]) -> None:
        """:meth:`call` ``action``, then :meth:`emit` its result."""
        self.emit(self.call(action), human)


pass_settings = click.make_pass_decorator(Settings, ensure=True)


class RelayCommand(click.Command):
    """A command that also takes the shared options (``shared``: their names; default all)
    after its name and merges those given on its command line into :class:`Settings`."""

    def __init__(self, *args: Any, shared: Iterable[str] = ALL_SHARED, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared = [option for option in SHARED_OPTIONS if option.name in set(shared)]
        self.params.extend(self.shared)

    def invoke(self, ctx: click.Context) -> Any:
        """Merge this command's shared options into :class:`Settings`. Raises UsageError
        for a shared option given to the group that this command does not take (``--json
        up``), as the command itself would."""
        settings = ctx.ensure_object(Settings)
        group = ctx.parent
        taken = {option.name for option in self.shared}
        for option in SHARED_OPTIONS:
            assert option.name is not None
            if (
                option.name not in taken
                and group is not None
                and group.get_parameter_source(option.name) is ParameterSource.COMMANDLINE
            ):
                raise click.UsageError(f"{self.name} does not take {option.opts[0]}", ctx)
        for option in self.shared:
            assert option.name is not None
            value = ctx.params.pop(option.name)
            if ctx.get_parameter_source(option.name) is ParameterSource.COMMANDLINE:
                setattr(settings, option.name, value)
        return super().invoke(ctx)


def command(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], RelayCommand]:
    """``click.command`` making a :class:`RelayCommand`."""
    return click.command(name, cls=RelayCommand, **attrs)


def option_with_default(
    *decls: str, default: Any, help: str, type: Any = None, metavar: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``click.option`` with a ``default`` shown in --help."""
    return click.option(
        *decls, default=default, show_default=True, type=type, help=help, metavar=metavar
    )
