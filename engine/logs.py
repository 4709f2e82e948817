"""Readable console output: log lines above the progress bars, the libraries quiet unless --verbose.

* `route_through_tqdm(logger)` makes the logger's console handlers write with `tqdm.write`, which
  clears the bar line, prints the record and redraws the bar (no record glued onto a bar).
* `quiet_libraries(verbose)` (call it right after argument parsing, before the heavy imports):
  warnings raised outside OPS's own packages are ignored, and mmcv's dump of every parameter's
  initialisation (hundreds of lines per model, written into the log file by `init_weights`) is
  replaced by nothing, mmcv's `initialize <Module> with init_cfg ...` lines and its table of hook
  priorities are dropped, and torch's import-time note about a missing CUDA toolkit is hidden.
  `--verbose` keeps all of them.
"""
import logging
import sys
import warnings

__all__ = ['TqdmHandler', 'route_through_tqdm', 'quiet_libraries', 'OWN_PACKAGES']

# modules whose warnings stay visible (our code); `__main__` is the script that was started
OWN_PACKAGES = r'(__main__|train|val|timing|gen_sweep_info|models|loaders|engine|evaluation|tools|benchmarks)(\..*)?$'


class TqdmHandler(logging.StreamHandler):
    """A console handler that writes above any active tqdm bar (same stream, level and format)."""

    def emit(self, record):
        try:
            message = self.format(record)
            from tqdm import tqdm
            tqdm.write(message, file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 (logging must not raise)
            self.handleError(record)


def route_through_tqdm(logger):
    """Replace the console StreamHandlers of `logger` (not its FileHandlers) by TqdmHandlers."""
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler and getattr(handler, 'stream', None) in (sys.stderr, sys.stdout):
            replacement = TqdmHandler(handler.stream)
            replacement.setLevel(handler.level)
            replacement.setFormatter(handler.formatter)
            for f in handler.filters:
                replacement.addFilter(f)
            logger.removeHandler(handler)
            logger.addHandler(replacement)
    return logger


# library loggers that warn at import about things that do not concern a user (no CUDA toolkit on a CPU machine)
QUIET_LOGGERS = ('torch.utils.cpp_extension',)
# records of the mmcv / mmdet loggers that only matter when debugging the libraries
NOISE_PREFIXES = ('initialize ', 'Hooks will be executed in the following order')


class LibraryNoiseFilter(logging.Filter):
    def filter(self, record):
        return not (isinstance(record.msg, str) and record.msg.startswith(NOISE_PREFIXES))


NOISE_FILTER = LibraryNoiseFilter()
_init_dump = None  # mmcv's BaseModule._dump_init_info while it is replaced


def quiet_libraries(verbose=False):
    """Hide library warnings and mmcv's per-parameter init dump, unless `verbose`."""
    global _init_dump
    if verbose:
        return
    warnings.filterwarnings('ignore')
    warnings.filterwarnings('default', module=OWN_PACKAGES)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ('mmcv', 'mmdet'):
        logging.getLogger(name).addFilter(NOISE_FILTER)  # the same object: added once
    try:
        from mmcv.runner import BaseModule
    except ImportError:
        return
    if _init_dump is None:
        _init_dump = BaseModule._dump_init_info
        BaseModule._dump_init_info = lambda self, logger_name: None


def restore_libraries():
    """Undo quiet_libraries' replacement of mmcv's init dump and its log filters (tests)."""
    global _init_dump
    for name in ('mmcv', 'mmdet'):
        logging.getLogger(name).removeFilter(NOISE_FILTER)
    if _init_dump is not None:
        from mmcv.runner import BaseModule
        BaseModule._dump_init_info = _init_dump
        _init_dump = None
