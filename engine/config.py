"""Loading and checking mmcv-style config files, with errors that say what to fix.

`load_config` refuses, before anything is built:
* a `_base_` file that does not exist (with a hint when the config was copied out of configs/);
* top-level keys nothing reads (typos, and keys of the original code that OPS does not read);
* nested keys the builders would reject or silently ignore, named by their path
  (`lr_config.warmup_iter: unknown key; did you mean warmup_iters?`): optimizer, optimizer_config,
  lr_config, momentum_config, checkpoint_config, log_config, custom_hooks, eval_config, data and its
  datasets and pipeline steps. The accepted keys come from the signatures of the classes the builders
  construct (mmcv hooks, torch optimisers, the registered datasets and pipeline steps), so they follow
  the installed libraries. `model` is checked when it is built (its builders report unknown keys).
It also refuses a config that mixes benchmarks: `benchmark` (core/benchmarks/, default occ3d-nuscenes)
names the protocol, and the config's own statements of it (occ_names, num_classes, point_cloud_range,
voxel_size, the head's pc_range / voxel_size / num_classes / empty_label, the transformer's pc_range)
must agree with the description; with the nested checks, every dataset and pipeline step that takes
a `benchmark` must name the same one.
It also keeps the final evaluation when `--cfg-options total_epochs=N` changes the schedule.
"""
import ast
import difflib
import inspect
import os
import os.path as osp

CONFIGS_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')

# Top-level keys a training/evaluation config may define. Anything else is almost always a typo
# (`totl_epochs`) that mmcv would silently ignore; helper variables of a config start with '_'.
KNOWN_TOP_LEVEL_KEYS = {
    'benchmark',  # core/benchmarks/; a config without it means occ3d-nuscenes
    'model', 'data', 'dataset_type', 'dataset_root', 'occ_root',
    'occ_names', 'num_classes', 'point_cloud_range', 'voxel_size', 'embed_dims', 'num_layers',
    'num_frames', 'num_levels', 'num_query', 'num_points', 'num_refines', 'img_norm_cfg',
    'ida_aug_conf', 'train_pipeline', 'test_pipeline', 'batch_size', 'total_epochs', 'optimizer',
    'optimizer_config', 'lr_config', 'momentum_config', 'load_from', 'revise_keys',
    'checkpoint_config', 'log_config', 'eval_config', 'custom_hooks', 'work_dir',
    'find_unused_parameters', 'max_consecutive_nan_steps',
    'execution',  # accel/policy.py: how the model is run (preset, CUDA graphs, autocast, ...)
    'auto_scale_lr', 'custom_imports',  # auto_scale_lr: engine/scaling.py; mmcv imports custom_imports' modules
}
# Keys of the original code's configs that nothing in OPS reads: an error that says where the setting went.
DEAD_TOP_LEVEL_KEYS = {
    'resume_from': 'resume with train.py --resume-from PATH (a restarted run resumes from its latest.pth by itself)',
    'seed': 'use train.py --seed N',
    'deterministic': 'runs are deterministic unless train.py --no-deterministic is given',
    'fp16': 'mixed precision follows optimizer_config.type (Fp16OptimizerHook) and train.py --amp-dtype',
    'workflow': 'train.py always trains [("train", 1)] and evaluates every eval_config.interval epochs',
    'evaluation': 'the evaluation interval is eval_config.interval',
    'dist_params': "torchrun's environment sets up the process group (NCCL on GPUs, gloo on the CPU)",
    'log_level': 'logs are at INFO level (--verbose adds the libraries\' messages)',
    'plugin': 'OPS registers its modules when train.py / val.py import them',
    'plugin_dir': 'OPS registers its modules when train.py / val.py import them',
    'debug': 'use --debug on the command line (tracebacks)',
    'input_modality': 'OPS uses the six cameras only; the dataset takes no modality argument',
    'object_names': 'no 3D boxes reach the model: the dataset and DefaultFormatBundle3D take no class list',
}
REQUIRED_TRAIN_KEYS = ('model', 'data', 'batch_size', 'total_epochs', 'optimizer',
                       'optimizer_config', 'lr_config', 'checkpoint_config', 'log_config')
# Hints for nested keys that exist in other codebases but not here.
NESTED_KEY_HINTS = {
    'data.persistent_workers': 'not configurable here',
}


class ConfigError(ValueError):
    """A config file that cannot be used as it is; the message names the key and the fix."""
    user_error = True  # engine/cli.py prints it as one line


def _suggestion(key, candidates):
    close = difflib.get_close_matches(str(key), [str(c) for c in candidates], n=1, cutoff=0.6)
    if close:
        return f'did you mean {close[0]}?'
    shown = sorted(str(c) for c in candidates)
    return f'accepted: {", ".join(shown)}' if len(shown) <= 16 else f'accepted: {", ".join(shown[:16])}, ...'


def _parse(text, path):
    """ast.parse, once more after a SystemError.

    CPython 3.11.7 once raised "SystemError: AST constructor recursion depth mismatch" here in the
    test suite, for a valid file that parses on the next call: an interpreter fault, not the file's.
    """
    try:
        return ast.parse(text, filename=path)
    except SystemError:
        return ast.parse(text, filename=path)


def _literal_bases(path):
    """The `_base_` entries of a config file, read without running it (None when computed)."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    try:
        tree = _parse(text, path)
    except SyntaxError as exc:
        raise ConfigError(f'cannot read config {path}: SyntaxError at line {exc.lineno}: {exc.msg}') from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return [value] if isinstance(value, str) else list(value)
    return []


def check_base_files(path, _seen=None):
    """Raise ConfigError when a `_base_` file of `path` (or of its bases) does not exist."""
    _seen = set() if _seen is None else _seen
    if osp.abspath(path) in _seen:
        return
    _seen.add(osp.abspath(path))
    for base in _literal_bases(path) or []:
        if not isinstance(base, str) or '{{' in base or '::' in base:
            continue  # mmcv's predefined variables and package-relative bases: mmcv resolves them
        full = osp.join(osp.dirname(path), osp.expanduser(base))
        if osp.isfile(full):
            check_base_files(full, _seen)
            continue
        hint = ''
        in_configs = osp.normpath(osp.join(CONFIGS_DIR, base))
        if not osp.isabs(base) and osp.isfile(in_configs) and \
                osp.normpath(osp.dirname(osp.abspath(path))) != osp.normpath(CONFIGS_DIR):
            hint = (f' The config seems to be copied out of configs/: relative _base_ paths are read from the '
                    f'config\'s own folder. Write _base_ = [{in_configs!r}] or keep the file in configs/.')
        raise ConfigError(f'{path}: _base_ file {base!r} not found (looked for {osp.normpath(full)}).{hint}')


def load_config(path, cfg_options=None, required=REQUIRED_TRAIN_KEYS, check_nested=True):
    """Read `path` (a Python config with optional `_base_`), merge `--cfg-options`, and check it.

    Args:
        path (str): config file.
        cfg_options (dict | None): dotted `key=value` overrides from the command line.
        required (tuple[str]): top-level keys that must exist.
        check_nested (bool): also check the nested keys (imports mmcv, mmdet and the OPS registries).
    Returns:
        mmcv.Config
    Raises:
        ConfigError: the message names the file, the key and the fix.
    """
    from mmcv import Config
    if not os.path.isfile(path):
        available = sorted(f for f in os.listdir(CONFIGS_DIR) if f.endswith('.py')) if osp.isdir(CONFIGS_DIR) else []
        raise ConfigError(f'config file not found: {path}. Available configs in configs/: {", ".join(available)}')
    check_base_files(path)
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # mmcv raises many types (SyntaxError, KeyError for a missing _base_ ...)
        first = (str(exc).strip().splitlines() or [''])[0]
        raise ConfigError(f'cannot read config {path}: {type(exc).__name__}: {first}') from exc
    if cfg_options:
        unknown = [k for k in cfg_options if k.split('.')[0] not in cfg and k.split('.')[0] not in KNOWN_TOP_LEVEL_KEYS]
        if unknown:
            raise ConfigError(f'--cfg-options: unknown top-level key(s) {unknown} for {path}; '
                              f'{_suggestion(unknown[0].split(".")[0], KNOWN_TOP_LEVEL_KEYS)}')
        eval_follows_schedule = ('total_epochs' in cfg_options and isinstance(cfg.get('eval_config'), dict)
                                 and cfg.eval_config.get('interval') == cfg.get('total_epochs')
                                 and not any(k == 'eval_config' or k.startswith('eval_config.') for k in cfg_options))
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as exc:
            raise ConfigError(f'--cfg-options {cfg_options}: cannot merge into {path}: {exc}') from exc
        if eval_follows_schedule:
            # `eval_config = dict(interval=total_epochs)` was computed when the file was read: keep its
            # meaning (evaluate at the end) for the new schedule
            cfg.eval_config.interval = cfg.total_epochs
    check_config(cfg, path, required)
    if check_nested:
        check_nested_keys(cfg, path)
    return cfg


def check_config(cfg, path='<config>', required=REQUIRED_TRAIN_KEYS):
    """Raise ConfigError for unknown or unread top-level keys, missing required keys, or a model without type."""
    dead = sorted(k for k in cfg.keys() if k in DEAD_TOP_LEVEL_KEYS)
    if dead:
        raise ConfigError(f'{path}: {dead[0]}: not read by OPS; remove it ({DEAD_TOP_LEVEL_KEYS[dead[0]]})'
                          + (f'; also {dead[1:]}' if len(dead) > 1 else ''))
    unknown = sorted(k for k in cfg.keys() if k not in KNOWN_TOP_LEVEL_KEYS and not k.startswith('_'))
    if unknown:
        raise ConfigError(
            f'{path}: unknown top-level key(s) {unknown}; {_suggestion(unknown[0], KNOWN_TOP_LEVEL_KEYS)} '
            f'(helper variables in a config must start with "_" to be accepted)')
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConfigError(f'{path}: missing required key(s) {missing} (see configs/_base_ for the defaults)')
    if 'model' in cfg and 'type' not in cfg.model:
        raise ConfigError(f'{path}: model has no "type" (expected e.g. type="OPS")')
    check_benchmark(cfg, path)


# ---------------------------------------------------------------------------------------------------
# the benchmark

def config_benchmark(cfg, path='<config>'):
    """The Benchmark the config selects (`benchmark`, default occ3d-nuscenes); an unknown name is a ConfigError."""
    from core.benchmarks import DEFAULT_BENCHMARK, BenchmarkError, get_benchmark
    try:
        return get_benchmark(cfg.get('benchmark', DEFAULT_BENCHMARK))
    except BenchmarkError as exc:
        raise ConfigError(f'{path}: benchmark: {exc}') from None


def _same(value, expected):
    """A config value equals a description value: sequences element-wise, numbers up to float rounding."""
    if isinstance(expected, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(expected)
                and all(_same(v, e) for v, e in zip(value, expected)))
    if isinstance(expected, str) or isinstance(value, (str, bool)) or value is None:
        return value == expected
    try:
        # a value the config computes (80 / 200) may differ from the decimal literal in the last bits (~1e-16)
        return abs(float(value) - float(expected)) <= 1e-9 * max(1.0, abs(float(expected)))
    except (TypeError, ValueError):
        return False


def check_benchmark(cfg, path='<config>'):
    """Raise ConfigError when the config's class list, grid or range disagree with its benchmark's description."""
    bench = config_benchmark(cfg, path)
    statements = [('occ_names', cfg.get('occ_names'), bench.class_names),
                  ('num_classes', cfg.get('num_classes'), bench.num_classes),
                  ('point_cloud_range', cfg.get('point_cloud_range'), bench.point_cloud_range),
                  ('voxel_size', cfg.get('voxel_size'), bench.voxel_size)]
    model = cfg.get('model')
    head = model.get('pts_bbox_head') if isinstance(model, dict) else None
    if isinstance(head, dict):
        statements += [('model.pts_bbox_head.pc_range', head.get('pc_range'), bench.point_cloud_range),
                       ('model.pts_bbox_head.voxel_size', head.get('voxel_size'), bench.voxel_size),
                       ('model.pts_bbox_head.num_classes', head.get('num_classes'), bench.num_classes),
                       ('model.pts_bbox_head.empty_label', head.get('empty_label'), bench.free_label)]
        transformer = head.get('transformer')
        if isinstance(transformer, dict):
            statements.append(('model.pts_bbox_head.transformer.pc_range', transformer.get('pc_range'),
                               bench.point_cloud_range))
    for key, value, expected in statements:
        if value is None:
            continue  # not stated: the description's value is used
        if not _same(value, expected):
            shown, wanted = (list(v) if isinstance(v, (tuple, list)) else v for v in (value, expected))
            raise ConfigError(f'{path}: {key} = {shown!r} disagrees with benchmark {bench.name!r}, whose value is '
                              f'{wanted!r}: the config mixes benchmarks (restate {bench.name}\'s value, or select '
                              f'the benchmark these values belong to with benchmark = \'<name>\')')


# ---------------------------------------------------------------------------------------------------
# nested keys

def accepted_arguments(obj):
    """Keyword arguments a class (or function) accepts, following `**kwargs` up the class hierarchy.

    Returns:
        (set[str], bool): the names, and whether the set is complete (False: some **kwargs lead
        somewhere that cannot be inspected, so any key may be valid).
    """
    if not inspect.isclass(obj):
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return set(), False
        names = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        return names, not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    names = set()
    for klass in obj.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        if klass is object:
            return names, True
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            return names, False
        params = list(sig.parameters.values())[1:]  # self
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, True
    return names, True


class _Checker:
    def __init__(self, path, benchmark=None):
        self.path = path
        self.benchmark = benchmark   # the config's Benchmark: datasets and steps that take one must name it

    def same_benchmark(self, where, value, cls):
        """A dataset or step whose class takes `benchmark` must use the config's (given, or by its default)."""
        if self.benchmark is None or cls is None:
            return
        try:
            param = inspect.signature(cls).parameters.get('benchmark')
        except (TypeError, ValueError):
            return
        if param is None:
            return
        name = value.get('benchmark', param.default)
        if name is inspect.Parameter.empty:
            return
        if name != self.benchmark.name and getattr(name, 'name', None) != self.benchmark.name:
            given = 'benchmark' in value
            self.fail(f'{where}.benchmark', f'{name!r}{"" if given else " (its default)"} differs from the config\'s '
                                            f'benchmark {self.benchmark.name!r}: the config mixes benchmarks; set '
                                            f'benchmark={self.benchmark.name!r} here')

    def fail(self, where, message):
        raise ConfigError(f'{self.path}: {where}: {message}')

    def keys(self, where, value, accepted, complete=True):
        """Every key of dict `value` (at `where`) must be in `accepted`."""
        if not isinstance(value, dict):
            self.fail(where, f'expected a dict, got {type(value).__name__} {value!r}')
        if not complete:
            return
        for key in value:
            if key not in accepted:
                hint = NESTED_KEY_HINTS.get(f'{where}.{key}')
                self.fail(f'{where}.{key}', f'unknown key; {hint or _suggestion(key, accepted)}')

    def registered(self, where, value, registry, what, extra=(), skip=(), type_key='type', default_type=None,
                   example=None):
        """A dict built by `registry` from its `type`: the type must exist, its keys fit the class."""
        if not isinstance(value, dict):
            self.fail(where, f'expected a dict with type=..., got {type(value).__name__} {value!r}')
        type_name = value.get(type_key, default_type)
        if type_name is None:
            hint = f' (e.g. {type_key}={example!r})' if example else ''
            self.fail(where, f'no {type_key}: give the {what} type{hint}')
        if not isinstance(type_name, str):
            return None  # a class object: the builder handles it
        cls = registry.get(type_name)
        if cls is None:
            self.fail(f'{where}.{type_key}', f'{type_name!r} is not a registered {what}; '
                                             f'{_suggestion(type_name, registry.module_dict)}')
        accepted, complete = accepted_arguments(cls)
        self.keys(where, {k: v for k, v in value.items() if k not in skip},
                  accepted | {type_key} | set(extra), complete)
        return cls

    # --- the sections ---

    def optimizer(self, value):
        from mmcv.runner.optimizer.builder import OPTIMIZERS
        where = 'optimizer'
        cls = self.registered(where, value, OPTIMIZERS, 'optimizer', extra=('constructor', 'paramwise_cfg'),
                              skip=('params',), example='AdamW')
        if cls is not None and 'params' in value:
            self.fail(f'{where}.params', 'unknown key; the parameters come from the model (paramwise_cfg sets '
                                         'per-parameter options)')
        paramwise = value.get('paramwise_cfg')
        if paramwise is not None and value.get('constructor', 'DefaultOptimizerConstructor') == \
                'DefaultOptimizerConstructor':
            self.keys(f'{where}.paramwise_cfg', paramwise,
                      {'custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult',
                       'dcn_offset_lr_mult', 'bypass_duplicate'})
            for name, options in (paramwise.get('custom_keys') or {}).items():
                self.keys(f'{where}.paramwise_cfg.custom_keys.{name}', options, {'lr_mult', 'decay_mult'})

    def optimizer_config(self, value):
        # train.py builds NanGuard(Fp16)OptimizerHook from these keys (optimizer_hook_config); cumulative_iters
        # pins the gradient accumulation (engine/scaling.py)
        where = 'optimizer_config'
        self.keys(where, value, {'type', 'grad_clip', 'loss_scale', 'cumulative_iters'})
        kind = value.get('type', 'OptimizerHook')
        if kind not in ('OptimizerHook', 'Fp16OptimizerHook', 'GradientCumulativeOptimizerHook',
                        'GradientCumulativeFp16OptimizerHook'):
            self.fail(f'{where}.type', f'{kind!r} is not supported: OptimizerHook (fp32) or Fp16OptimizerHook '
                                       f'(mixed precision on GPUs)')
        if value.get('grad_clip') is not None:
            import torch
            accepted, _ = accepted_arguments(torch.nn.utils.clip_grad_norm_)
            self.keys(f'{where}.grad_clip', value['grad_clip'], accepted - {'parameters'})

    def updater(self, name, value, suffix):
        from mmcv.runner import HOOKS
        if not isinstance(value, dict):
            return  # None (no hook) or a Hook object
        if 'policy' not in value:
            self.fail(name, f'no policy: give e.g. policy="CosineAnnealing" (the {suffix} hook is <policy>{suffix})')
        policy = value['policy']
        hook_type = (policy.title() if policy == policy.lower() else policy) + suffix
        cls = HOOKS.get(hook_type)
        if cls is None:
            policies = [k[:-len(suffix)] for k in HOOKS.module_dict if k.endswith(suffix)]
            self.fail(f'{name}.policy', f'unknown policy {policy!r}; {_suggestion(policy, policies)}')
        accepted, complete = accepted_arguments(cls)
        self.keys(name, value, accepted | {'policy'}, complete)

    def checkpoint_config(self, value):
        from mmcv.runner import HOOKS

        from engine.runner import AtomicEpochBasedRunner
        if not isinstance(value, dict):
            return
        # CheckpointHook passes its **kwargs on to runner.save_checkpoint
        extra, _ = accepted_arguments(AtomicEpochBasedRunner.save_checkpoint)
        self.registered('checkpoint_config', value, HOOKS, 'hook', extra=extra - {'self', 'out_dir'},
                        default_type='CheckpointHook')

    def log_config(self, value):
        from mmcv.runner import HOOKS
        self.keys('log_config', value, {'interval', 'hooks'})
        for i, hook in enumerate(value.get('hooks') or []):
            self.registered(f'log_config.hooks[{i}]', hook, HOOKS, 'logger hook')

    def custom_hooks(self, value):
        from mmcv.runner import HOOKS
        for i, hook in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(hook, dict):
                self.registered(f'custom_hooks[{i}]', hook, HOOKS, 'hook', extra=('priority',))

    def eval_config(self, value):
        self.keys('eval_config', value, {'interval'})  # train.py: EvalHook(interval=...)

    def model(self, where, value):
        """The detector and every typed part inside it (backbone, neck, head, transformer, losses)."""
        from mmdet.models.builder import MODELS
        self.registered(where, value, MODELS, 'model', example='OPS')
        self.model_parts(where, value)

    def model_parts(self, where, value):
        from mmdet.models.builder import MODELS
        from mmdet.models.utils.builder import TRANSFORMER
        for key, sub in value.items():
            if not (isinstance(sub, dict) and isinstance(sub.get('type'), str)):
                continue
            for registry, what in ((MODELS, 'model part'), (TRANSFORMER, 'transformer')):
                # parts of other registries (norm layers, init configs, ...) are left to their builders
                if registry.get(sub['type']) is not None:
                    self.registered(f'{where}.{key}', sub, registry, what)
                    self.model_parts(f'{where}.{key}', sub)
                    break

    def data(self, value):
        # samples_per_gpu: optional, pins the per-process batch (engine/scaling.py)
        self.keys('data', value, {'workers_per_gpu', 'samples_per_gpu', 'train', 'val', 'test'})
        for split in ('train', 'val', 'test'):
            if split in value:
                self.dataset(f'data.{split}', value[split])

    def dataset(self, where, value):
        from mmdet.datasets import DATASETS
        if isinstance(value, (list, tuple)):  # mmdet concatenates a list of datasets
            for i, item in enumerate(value):
                self.dataset(f'{where}[{i}]', item)
            return
        cls = self.registered(where, value, DATASETS, 'dataset', example='NuScenesOccDataset')
        self.same_benchmark(where, value, cls)
        for key, sub in value.items():
            if key == 'pipeline':
                self.pipeline(f'{where}.pipeline', sub)
            elif isinstance(sub, dict) and 'type' in sub and isinstance(sub['type'], str) and sub['type'] in DATASETS:
                self.dataset(f'{where}.{key}', sub)  # wrappers (RepeatDataset(dataset=...), ...)

    def pipeline(self, where, steps):
        from mmdet.datasets import PIPELINES
        if not isinstance(steps, (list, tuple)):
            self.fail(where, f'expected a list of pipeline steps, got {type(steps).__name__}')
        for i, step in enumerate(steps):
            if not isinstance(step, dict):
                continue  # a callable: Compose accepts it
            cls = self.registered(f'{where}[{i}]', step, PIPELINES, 'pipeline step')
            self.same_benchmark(f'{where}[{i}]', step, cls)
            for key, sub in step.items():  # nested steps (MultiScaleFlipAug3D(transforms=[...]))
                if isinstance(sub, (list, tuple)) and sub and all(isinstance(s, dict) and 'type' in s for s in sub):
                    self.pipeline(f'{where}[{i}].{key}', sub)


def check_nested_keys(cfg, path='<config>'):
    """Raise ConfigError naming the first nested key that its builder would reject or ignore."""
    import engine.runner  # noqa: F401  (registers the NanGuard hooks)
    import loaders  # noqa: F401  (registers the dataset and the pipeline steps)
    import models  # noqa: F401  (registers the detector, head, transformer)
    checker = _Checker(path, config_benchmark(cfg, path))
    if cfg.get('model') is not None:
        checker.model('model', cfg.model)
    if cfg.get('optimizer') is not None:
        checker.optimizer(cfg.optimizer)
    if cfg.get('optimizer_config') is not None:
        checker.optimizer_config(cfg.optimizer_config)
    if cfg.get('lr_config') is not None:
        checker.updater('lr_config', cfg.lr_config, 'LrUpdaterHook')
    if cfg.get('momentum_config') is not None:
        checker.updater('momentum_config', cfg.momentum_config, 'MomentumUpdaterHook')
    if cfg.get('checkpoint_config') is not None:
        checker.checkpoint_config(cfg.checkpoint_config)
    if cfg.get('log_config') is not None:
        checker.log_config(cfg.log_config)
    if cfg.get('custom_hooks') is not None:
        checker.custom_hooks(cfg.custom_hooks)
    if cfg.get('eval_config') is not None:
        checker.eval_config(cfg.eval_config)
    if cfg.get('data') is not None:
        checker.data(cfg.data)
