"""tools/make_synthetic_nuscenes.py: generation is deterministic and seeded, bad arguments and existing
output are refused with the reason, --skip-if-exists reuses only an identical world."""
import filecmp
import glob
import os.path as osp

import pytest

from tools import make_synthetic_nuscenes as maker


def test_generation_is_deterministic_and_seeded(tmp_path):
    common = ['--train-scenes', '1', '--val-scenes', '0', '--keyframes', '2', '--sweeps', '1', '--scale', '0.05',
              '--workers', '1', '--quiet']
    for name, seed in (('a', 5), ('b', 5), ('c', 6)):
        maker.main(common + ['--seed', str(seed), '--out', str(tmp_path / name)])
    files = sorted(osp.relpath(p, tmp_path / 'a') for p in glob.glob(str(tmp_path / 'a' / '**' / '*'), recursive=True)
                   if osp.isfile(p) and not p.endswith(maker.PARAMS_FILE))  # that one records timings
    assert any(f.endswith('labels.npz') for f in files) and any(f.endswith('.jpg') for f in files)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert not mismatch and not errors
    first_image = [sorted(glob.glob(str(tmp_path / d / 'samples' / 'CAM_FRONT' / '*.jpg')))[0] for d in 'ac']
    assert not filecmp.cmp(*first_image, shallow=False)  # another seed, another world


@pytest.mark.parametrize('argv, message', [
    (['--train-scenes', '9'], '--train-scenes must be in 1..8'),
    (['--val-scenes', '3'], '--val-scenes must be in 0..2'),
    (['--scale', '0'], '--scale must be in'),
    (['--keyframes', '0'], '--keyframes must be >= 1'),
])
def test_bad_arguments_are_refused_with_the_reason(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        maker.main(argv + ['--out', str(tmp_path / 'x'), '--quiet'])


def test_existing_output_needs_force(tmp_path):
    (tmp_path / 'x').mkdir()
    with pytest.raises(SystemExit, match='--force'):
        maker.main(['--out', str(tmp_path / 'x'), '--quiet'])


def test_skip_if_exists_reuses_only_an_identical_world(tmp_path):
    argv = ['--train-scenes', '1', '--val-scenes', '0', '--keyframes', '1', '--sweeps', '0', '--scale', '0.05',
            '--workers', '1', '--quiet', '--out', str(tmp_path / 'w')]
    first = maker.main(argv)
    assert not first.get('skipped') and first['samples'] == 1 and first['images'] == 6
    again = maker.main(argv + ['--skip-if-exists'])
    assert again['skipped'] and again['params'] == first['params']
    with pytest.raises(SystemExit, match='other arguments'):
        maker.main(argv + ['--skip-if-exists', '--seed', '3'])
