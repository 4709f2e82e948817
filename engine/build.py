"""One way to build what train.py, val.py and timing.py run: the detector and the data loaders.

    model = build_model(cfg.model, checkpoint=path)          # evaluation: strict weights
    model = build_model(cfg.model, pretrained=cfg.load_from)   # training: init + pretrained backbone
    model = build_model(cfg.model, checkpoint=path, execution=policy_from_config(cfg.get('execution'), fast=True))
    dataset = build_dataset(cfg.data.val, test_mode=True)
    loader = build_test_loader(dataset, workers, dist=world_size > 1)

Building registers the project's modules first (the `models` and `loaders` packages), so a config's
`type='OPS'`, `type='NuScenesOccDataset'` etc. resolve. How the model is run (autocast, CUDA graphs,
kernels) is an execution policy applied after its weights are loaded (accel/, `accelerate`).
"""
import os.path as osp

DEFAULT_REVISE_KEYS = [(r'^backbone', 'img_backbone')]

__all__ = ['register_modules', 'build_model', 'build_dataset', 'build_train_loader', 'build_test_loader',
           'set_test_mode', 'use_gpu_decode', 'apply_gpu_decode']


def register_modules():
    """Import the packages whose modules register themselves in mmdet's registries."""
    import loaders  # noqa: F401  (dataset and pipeline steps)
    import models  # noqa: F401  (detector, head, transformer)


def build_model(model_cfg, checkpoint=None, pretrained=None, revise_keys=None, logger=None, trust_checkpoint=False,
                execution=None):
    """The detector of `model_cfg`, with its weights.

    Args:
        model_cfg (dict): the config's `model`.
        checkpoint (str | None): a full checkpoint, loaded strictly (models/weights.py: names and
            shapes must match exactly). None: `init_weights()` (random init, seeded by the caller).
        pretrained (str | None): without `checkpoint`, then load the backbone of this detection
            checkpoint (the config's `load_from`: only the ResNet lands in the model).
        revise_keys (list | None): regex renames of the pretrained keys (default backbone -> img_backbone).
        logger: where the loading is reported.
        trust_checkpoint (bool): read `checkpoint` / `pretrained` with the full unpickler, which can run
            code stored in the file (the entry points' --trust-checkpoint); by default only tensors,
            containers and numbers load (models/weights.py).
        execution (ExecutionPolicy | None): applied with `accel.accelerate` once the weights are in; None: the
            bare model (the method's float32 arithmetic, eager).
    Returns:
        the detector on the CPU, in training mode.
    """
    register_modules()
    from mmdet.models import build_detector

    from models.weights import load_checkpoint_strict, load_pretrained_backbone
    model = build_detector(model_cfg)
    if checkpoint is not None:
        load_checkpoint_strict(model, checkpoint, trust=trust_checkpoint)
        if logger is not None:
            logger.info(f'loaded {checkpoint}')
    else:
        model.init_weights()
        if pretrained:
            if not osp.isfile(pretrained):
                raise FileNotFoundError(
                    f'pretrained weights not found: {pretrained}. Download them as described in pretrain/README.md, '
                    f'or train from scratch with --cfg-options load_from=None')
            load_pretrained_backbone(model, pretrained, revise_keys=revise_keys or DEFAULT_REVISE_KEYS,
                                     logger=logger, trust=trust_checkpoint)
    if execution is not None:
        from accel import accelerate
        accelerate(model, execution)
        if logger is not None:
            logger.info(execution.describe())
    return model


def build_dataset(data_cfg, test_mode=None):
    """A dataset from one entry of the config's `data` (train / val / test); `test_mode` overrides it."""
    register_modules()
    from mmdet.datasets import build_dataset as mmdet_build_dataset
    return mmdet_build_dataset(data_cfg, None if test_mode is None else dict(test_mode=test_mode))


def build_train_loader(dataset, samples_per_gpu, workers_per_gpu, seed, cumulative_iters=1):
    """Shuffled training loader of one process whose global batches do not depend on the number of
    processes (loaders.builder.build_train_dataloader; the world size is read from the process group)."""
    from loaders.builder import build_train_dataloader
    return build_train_dataloader(dataset, samples_per_gpu, workers_per_gpu, cumulative_iters=cumulative_iters,
                                  seed=seed)


def build_test_loader(dataset, workers_per_gpu, dist, samples_per_gpu=1):
    """Loader in dataset order (batches of consecutive samples); with `dist`, this rank's share as mmdet's
    DistributedSampler deals it."""
    from loaders.builder import build_dataloader
    return build_dataloader(dataset, samples_per_gpu, workers_per_gpu, num_gpus=1, dist=dist, shuffle=False)


def set_test_mode(cfg, online):
    """Choose the test path in the config, before the model and the loaders are built.

    One decision for the whole run, taken by the entry point from the number of processes:
    online (one process: the test pipeline loads the key frame's images only and the model reuses
    cached features of earlier samples) or offline (every frame's images per sample, any order).
    Sets `model.online` and `online` of every multi-frame loading step of the val and test pipelines: the
    steps whose class declares `loads_history_frames = True`. (How the model runs, faithful or fast, is the
    execution policy's: `build_model(..., execution=policy)`.)
    """
    cfg.model.online = bool(online)
    register_modules()
    from mmdet.datasets import PIPELINES

    def visit(steps):
        for step in steps:
            if not isinstance(step, dict):
                continue  # a callable step: nothing to set
            if isinstance(step.get('transforms'), (list, tuple)):  # a wrapper (MultiScaleFlipAug3D)
                visit(step['transforms'])
            kind = step.get('type')
            cls = kind if isinstance(kind, type) else PIPELINES.get(kind) if isinstance(kind, str) else None
            # the multi-frame loaders say so themselves (loaders/pipelines/loading.py, loads_history_frames)
            if getattr(cls, 'loads_history_frames', False):
                step['online'] = bool(online)

    for split in ('val', 'test'):
        if split in cfg.get('data', {}):
            visit(cfg.data[split].get('pipeline', []))
    return cfg


def apply_gpu_decode(cfg, policy, device, logger=None):
    """Convert the pipelines to the GPU decode when the execution policy asks for it (`use_gpu_decode`); returns
    whether it did. `policy.gpu_decode='auto'` (the fast preset) turns it on only where it works: on a CUDA
    `device` whose torchvision decodes JPEGs there, with pipelines free of CPU-only pixel steps; True turns it on
    anywhere (the CPU decodes with libjpeg-turbo then) and fails in one line on such a pipeline."""
    import torch
    if policy.gpu_decode is False:
        return False
    if policy.gpu_decode == 'auto':
        from loaders.pipelines.gpu_decode import cpu_pixel_step
        from models.gpu_image_decode import device_decodes_jpeg
        blocker = next(filter(None, (cpu_pixel_step(cfg.data[split].get('pipeline', []))
                                     for split in ('train', 'val', 'test') if split in cfg.get('data', {}))), None)
        reason = ('the device is not a GPU' if torch.device(device).type != 'cuda' else
                  f'the pipeline step {blocker} needs decoded pixels in the loader' if blocker else
                  None if device_decodes_jpeg(device) else 'torchvision cannot decode JPEGs on this device')
        if reason is not None:
            if logger is not None and torch.device(device).type == 'cuda':
                logger.info(f'images decoded on the CPU: {reason}')
            return False
    use_gpu_decode(cfg)
    if logger is not None:
        logger.info('images decoded on the device (execution.gpu_decode)')
    return True


def use_gpu_decode(cfg):
    """Convert the config's train, val and test pipelines to the GPU-decode steps (the execution policy's
    `gpu_decode`; loaders/pipelines/gpu_decode.py: the loaders read JPEG bytes and draw the augmentation, the
    model decodes on its device). Before the datasets are built; returns `cfg`."""
    register_modules()
    from loaders.pipelines import gpu_decode_pipeline
    for split in ('train', 'val', 'test'):
        if split in cfg.get('data', {}) and 'pipeline' in cfg.data[split]:
            cfg.data[split].pipeline = gpu_decode_pipeline(cfg.data[split].pipeline)
    return cfg
