"""The official state-dict layouts kept in tests/data/checkpoint-keys/ (`name shape` per line, shape `AxBxC` or
`scalar`): `official_keys('ops-t')` -> {name: shape tuple}."""
import os

KEYS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'checkpoint-keys')


def official_keys(name):
    """{parameter or buffer name: shape} of the key list `<name>.txt` (e.g. 'ops-t', 'opusv2-l')."""
    path = os.path.join(KEYS_DIR, f'{name}.txt')
    assert os.path.isfile(path), f'official key list not found: {path} (tests/data/checkpoint-keys is part of the repo)'
    keys = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                key, shape = line.split()
                keys[key] = () if shape == 'scalar' else tuple(int(x) for x in shape.split('x'))
    return keys


def detectors_one_at_a_time(config_path_of):
    """variant -> the detector built (seed 0) from the config `config_path_of(variant)`; only the last one is kept
    (a full-size model holds hundreds of MB of weights)."""
    import torch
    from mmcv import Config
    from mmdet.models import build_detector
    kept = {}

    def get(variant):
        if variant not in kept:
            kept.clear()
            torch.manual_seed(0)
            kept[variant] = build_detector(Config.fromfile(config_path_of(variant)).model)
        return kept[variant]

    return get
