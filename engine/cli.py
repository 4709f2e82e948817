"""Conventions of the command-line tools (train.py, val.py, timing.py, gen_sweep_info.py, tools/check_data.py).

* A bad input (a missing or corrupt file, an unknown config key, a checkpoint that does not fit) ends
  the program with `SystemExit('<prog>: error: <what and the fix>')`: exit status 1 and one or two
  lines on stderr, no traceback (in-process callers, e.g. tests, catch the SystemExit). `--debug`
  shows the traceback instead. Exceptions that are bugs keep their traceback.
  An exception counts as a bad input when its class sets `user_error = True` (ConfigError,
  CheckpointError, CheckpointMismatchError, DataCheckError, DataPrepError, UserError ...) or it is a
  FileNotFoundError (our loaders raise those with messages that name the file and the fix).
* `--verbose` keeps the library warnings and mmcv's per-parameter initialisation dump (engine/logs.py).
* This module imports nothing heavy, so that `--help` answers at once: the entry points import torch,
  mmcv and mmdet only after their arguments are parsed. `DictAction` is mmcv's (same parsing), here for
  that reason.
"""
import argparse
import sys

__all__ = ['UserError', 'DictAction', 'add_common_arguments', 'run_main', 'entry_point', 'is_user_error',
           'error_message']


class UserError(Exception):
    """A bad input the user fixes (a path, a flag, a file); the message names it and the fix."""
    user_error = True


def is_user_error(exc):
    return bool(getattr(exc, 'user_error', False)) or isinstance(exc, FileNotFoundError)


def error_message(exc, max_lines=2):
    """The message of `exc` as at most `max_lines` lines.

    An exception re-raised by a DataLoader worker carries the worker's traceback in its message
    ("Caught FileNotFoundError in DataLoader worker process 0. Original Traceback ..."): only its
    last line, the original message, is kept.
    """
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) adds quotes
    if 'Original Traceback (most recent call last)' in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1].split(': ', 1)[-1] if lines else text
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()] or [type(exc).__name__]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [' '.join(line.strip() for line in lines[max_lines - 1:])]
    return '\n'.join(lines)


def add_common_arguments(parser, trust_checkpoint=False):
    """--debug and --verbose (every tool), --trust-checkpoint (tools that read checkpoints)."""
    group = parser.add_argument_group('diagnostics')
    group.add_argument('--debug', action='store_true',
                       help='show the full traceback of an error instead of the one-line message')
    group.add_argument('--verbose', action='store_true',
                       help="keep library warnings and mmcv's per-parameter initialisation log")
    if trust_checkpoint:
        parser.add_argument('--trust-checkpoint', action='store_true',
                            help='load checkpoints with the full unpickler, which can run code stored in the file: '
                                 'only for files you trust (by default only tensors, containers and numbers load)')
    return parser


def run_main(main, prog, argv=None):
    """Call `main(argv)`; a bad input raises SystemExit('<prog>: error: ...') (printed, exit status 1).

    Args:
        main (callable): the tool's main(argv) -> result.
        prog (str): name shown in front of the message (e.g. 'train.py').
        argv (list[str] | None): arguments (default sys.argv[1:]); '--debug' among them keeps tracebacks.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except Exception as exc:  # noqa: BLE001 (re-raised unless it is a bad input)
        close_progress_bars()  # the message starts on its own line, not after a half-drawn bar
        if '--debug' in argv or not is_user_error(exc):
            raise
        message = error_message(exc)
        if not message.startswith(f'{prog}:'):
            message = f'{prog}: error: {message}'
        raise SystemExit(message) from None


def close_progress_bars():
    """Close the tqdm bars still open (an error interrupted their loop)."""
    tqdm_module = sys.modules.get('tqdm')
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, '_instances', ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 (best effort)
            pass


def entry_point(main, prog):
    """`if __name__ == '__main__'` of a tool: run_main, and Ctrl-C ends with one line (status 130)."""
    try:
        return run_main(main, prog)
    except KeyboardInterrupt:
        close_progress_bars()
        if '--debug' in sys.argv[1:]:
            raise
        print(f'{prog}: interrupted', file=sys.stderr)
        sys.exit(130)


class DictAction(argparse.Action):
    """argparse action: `KEY=VALUE ...` -> dict (mmcv.DictAction's parsing, without importing mmcv).

    Values: int, float, true/false, None, else str; `V1,V2` or `[V1,V2]` give lists, `(V1,V2)` tuples,
    nested brackets nest.
    """

    @staticmethod
    def _parse_int_float_bool(val):
        for cast in (int, float):
            try:
                return cast(val)
            except ValueError:
                pass
        if val.lower() in ('true', 'false'):
            return val.lower() == 'true'
        if val == 'None':
            return None
        return val

    @staticmethod
    def _parse_iterable(val):
        def find_next_comma(string):
            if string.count('(') != string.count(')') or string.count('[') != string.count(']'):
                raise argparse.ArgumentTypeError(f'imbalanced brackets in {string!r}')
            for idx, char in enumerate(string):
                pre = string[:idx]
                if char == ',' and pre.count('(') == pre.count(')') and pre.count('[') == pre.count(']'):
                    return idx
            return len(string)

        val = val.strip('\'"').replace(' ', '')
        is_tuple = False
        if val.startswith('(') and val.endswith(')'):
            is_tuple = True
            val = val[1:-1]
        elif val.startswith('[') and val.endswith(']'):
            val = val[1:-1]
        elif ',' not in val:
            return DictAction._parse_int_float_bool(val)
        values = []
        while len(val) > 0:
            comma = find_next_comma(val)
            values.append(DictAction._parse_iterable(val[:comma]))
            val = val[comma + 1:]
        return tuple(values) if is_tuple else values

    def __call__(self, parser, namespace, values, option_string=None):
        options = {}
        for kv in values:
            if '=' not in kv:
                parser.error(f'{option_string}: expected KEY=VALUE, got {kv!r}')
            key, val = kv.split('=', maxsplit=1)
            try:
                options[key] = self._parse_iterable(val)
            except argparse.ArgumentTypeError as exc:
                parser.error(f'{option_string} {kv}: {exc}')
        setattr(namespace, self.dest, options)
