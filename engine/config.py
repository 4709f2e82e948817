"""Loading and checking mmcv-style config files, with errors that say what to fix."""
import os

from mmcv import Config

# Top-level keys a training/evaluation config may define. Anything else is almost always a typo
# (`totl_epochs`) that mmcv would silently ignore; helper variables of a config start with '_'.
KNOWN_TOP_LEVEL_KEYS = {
    'model', 'data', 'dataset_type', 'dataset_root', 'occ_root', 'input_modality', 'object_names',
    'occ_names', 'num_classes', 'point_cloud_range', 'voxel_size', 'embed_dims', 'num_layers',
    'num_frames', 'num_levels', 'num_query', 'num_points', 'num_refines', 'img_norm_cfg',
    'ida_aug_conf', 'train_pipeline', 'test_pipeline', 'batch_size', 'total_epochs', 'optimizer',
    'optimizer_config', 'lr_config', 'momentum_config', 'load_from', 'revise_keys', 'resume_from',
    'checkpoint_config', 'log_config', 'eval_config', 'evaluation', 'workflow', 'debug',
    'custom_hooks', 'seed', 'deterministic', 'work_dir', 'dist_params', 'log_level', 'fp16',
    'find_unused_parameters', 'max_consecutive_nan_steps', 'plugin', 'plugin_dir',
}
REQUIRED_TRAIN_KEYS = ('model', 'data', 'batch_size', 'total_epochs', 'optimizer',
                       'optimizer_config', 'lr_config', 'checkpoint_config', 'log_config')


class ConfigError(ValueError):
    """A config file that cannot be used as it is; the message names the key and the fix."""


def load_config(path, cfg_options=None, required=REQUIRED_TRAIN_KEYS):
    """Read `path` (a Python config with optional `_base_`), merge `--cfg-options`, and check it.

    Args:
        path (str): config file.
        cfg_options (dict | None): dotted `key=value` overrides from the command line.
        required (tuple[str]): top-level keys that must exist.
    Returns:
        mmcv.Config
    """
    if not os.path.isfile(path):
        configs_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
        available = sorted(f for f in os.listdir(configs_dir) if f.endswith('.py')) if os.path.isdir(configs_dir) else []
        raise ConfigError(f'config file not found: {path}. Available configs in configs/: {", ".join(available)}')
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # mmcv raises many types (SyntaxError, KeyError for a missing _base_ ...)
        raise ConfigError(f'cannot read config {path}: {type(exc).__name__}: {exc}') from exc
    if cfg_options:
        unknown = [k for k in cfg_options if k.split('.')[0] not in cfg and k.split('.')[0] not in KNOWN_TOP_LEVEL_KEYS]
        if unknown:
            raise ConfigError(f'--cfg-options: unknown top-level key(s) {unknown} for {path}')
        cfg.merge_from_dict(cfg_options)
    check_config(cfg, path, required)
    return cfg


def check_config(cfg, path='<config>', required=REQUIRED_TRAIN_KEYS):
    """Raise ConfigError for unknown top-level keys, missing required keys, or a model without type."""
    unknown = sorted(k for k in cfg.keys() if k not in KNOWN_TOP_LEVEL_KEYS and not k.startswith('_'))
    if unknown:
        raise ConfigError(
            f'{path}: unknown top-level key(s) {unknown}. Check the spelling; helper variables in a '
            f'config must start with "_" to be accepted.')
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConfigError(f'{path}: missing required key(s) {missing} (see configs/_base_ for the defaults)')
    if 'model' in cfg and 'type' not in cfg.model:
        raise ConfigError(f'{path}: model has no "type" (expected e.g. type="OPS")')
