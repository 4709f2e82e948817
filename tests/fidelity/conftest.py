"""Options of the fidelity checks against the authors' code (docs/method.md, "Fidelity against the authors' code").

    pytest tests/fidelity --authors-code PATH --mmdet3d-code PATH [--mmdet3d-deps PATH]

`--authors-code`: a checkout of github.com/w1394945493/OPUS at 216dc53; `--mmdet3d-code`: an mmdetection3d
v1.0.0rc6 source tree; `--mmdet3d-deps`: a `pip install --target` folder with mmdet3d's Python dependencies that
the project's environment lacks. Without the first two every test of the authors' code skips, naming
the options (test_stand_ins.py, which checks the CPU equivalents alone, runs anyway).
"""
import pytest

OPTIONS = ('--authors-code', '--mmdet3d-code')


def pytest_addoption(parser):
    group = parser.getgroup('fidelity', 'fidelity against the authors\' OPUS code')
    group.addoption('--authors-code', metavar='PATH', default=None,
                    help='checkout of github.com/w1394945493/OPUS at 216dc53')
    group.addoption('--mmdet3d-code', metavar='PATH', default=None,
                    help='mmdetection3d v1.0.0rc6 source tree')
    group.addoption('--mmdet3d-deps', metavar='PATH', default=None,
                    help='pip --target folder with mmdet3d\'s Python dependencies (numba, mmsegmentation, ...)')


def _option(config, name):
    # the options exist only when this folder's conftest was loaded at start-up (pytest tests/fidelity ...)
    return config.getoption(name.lstrip('-').replace('-', '_'), default=None)


def pytest_collection_modifyitems(config, items):
    if all(_option(config, name) for name in OPTIONS):
        return
    skip = pytest.mark.skip(reason='needs the authors\' code: pytest tests/fidelity --authors-code PATH '
                                   '--mmdet3d-code PATH (docs/method.md, "Fidelity against the authors\' code")')
    for item in items:
        # the tests of the authors' code (the `reference` fixture); test_stand_ins.py needs no checkout
        if 'reference' in getattr(item, 'fixturenames', ()):
            item.add_marker(skip)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """One intra-op thread: the checks run many small ops (the CPU stand-ins, the furthest-point loops), which two
    threads on a busy 2-core machine slow down tenfold; restored after each module."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def reference(request):
    """The authors' OPUS-Fusion modules (authors_code.load_reference)."""
    from authors_code import load_reference
    config = request.config
    return load_reference(_option(config, '--authors-code'), _option(config, '--mmdet3d-code'),
                          _option(config, '--mmdet3d-deps'))
