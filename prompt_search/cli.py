"""What every top-level script shares: settings from config.py with --NAME=value overrides,
and errors a user can act on, printed as one line instead of a traceback."""

import sys
from collections.abc import Callable
from types import ModuleType, SimpleNamespace

import config


class UserError(Exception):
    """Something the user can fix (a missing file, a bad value); printed without a traceback."""


def load_config(argv: list[str], defaults: ModuleType = config) -> SimpleNamespace:
    """The constants of config.py, with each --NAME=value in argv replacing one for this run."""
    settings = {name: value for name, value in vars(defaults).items() if name.isupper()}
    for arg in argv:
        name, sep, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep:
            raise UserError(f"arguments look like --NAME=value, got {arg!r}")
        if name not in settings:
            raise UserError(f"unknown setting {name!r}; the settings are: {', '.join(settings)}")
        settings[name] = _parse(name, text, settings[name])
    return SimpleNamespace(**settings)


def _parse(name: str, text: str, default: object) -> object:
    kind = type(default)
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise UserError(f"--{name}={text}: expected a {kind.__name__}, like the default {default!r}")


def run(main: Callable[[list[str]], None]) -> None:
    """Run a script's main(argv); a UserError exits with status 1 and its message, Ctrl-C with status 130."""
    try:
        main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print("interrupted: outputs already complete are kept; run it again to go on", file=sys.stderr)
        sys.exit(130)
