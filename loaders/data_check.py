"""Check, before a long run, that every file a dataset will read exists and is not empty.

Without it a missing image is found only when its sample is drawn, possibly hours into training.
The check stats files (it does not open them): the key-frame images of every sample, the camera
sweeps when the pipeline loads past frames, and the Occ3D labels (`labels.npz`) that training or
evaluation reads. Paths seen by several samples are checked once; the stats run in a thread pool
(fast on network file systems too).

    from loaders.data_check import check_dataset
    check_dataset(dataset, name='train')           # raises DataCheckError naming the files

Command line: tools/check_data.py. train.py / val.py run it first (`--skip-data-check` skips it).
"""
import os
import os.path as osp
import stat
from concurrent.futures import ThreadPoolExecutor

from core.benchmarks import DEFAULT_BENCHMARK, BenchmarkError, get_benchmark

__all__ = ['DataCheckError', 'dataset_files', 'info_files', 'find_problems', 'check_dataset', 'check_infos']


class DataCheckError(RuntimeError):
    """Files the infos name are missing or empty; the message names them and the fix."""
    user_error = True  # engine/cli.py prints it without a traceback

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


def _label_path(info, occ_root, benchmark):
    """The label file of `info` by the benchmark's one rule (`Benchmark.label_path`: occ_root wins, else the info's
    occ_path); None when neither is there (the loading step or the evaluator then says what to set)."""
    try:
        return benchmark.label_path(info, occ_root)
    except BenchmarkError:
        return None


def info_files(infos, images=True, sweeps=True, labels=True, occ_root=None, eval_labels=False,
               benchmark=DEFAULT_BENCHMARK):
    """{path: description} of the files named by `infos` (gen_sweep_info.py dicts), first mention wins.

    Args:
        infos (list[dict]): the infos.
        images (bool): key-frame camera images (`cams[*].data_path`).
        sweeps (bool): camera sweeps (`cam_sweeps[*][*].data_path`).
        labels (bool): the label files (`<occ_root>/<scene>/<token>/labels.npz` when occ_root is given, else
            `occ_path`: the benchmark's label-path rule).
        occ_root (str | None): the label folder (Occ3D gts/).
        eval_labels (bool): describe them as the labels the evaluation reads (same rule).
        benchmark (str | Benchmark): registered benchmark name.
    """
    bench = get_benchmark(benchmark)
    files = {}

    def add(path, what):
        if path and path not in files:
            files[path] = what

    for info in infos:
        token = info.get('token', '?')
        if images:
            for cam, entry in (info.get('cams') or {}).items():
                add(entry.get('data_path'), f'{cam} image of sample {token}')
        if sweeps:
            for k, sweep in enumerate(info.get('cam_sweeps') or []):
                for cam, entry in sweep.items():
                    add(entry.get('data_path'), f'{cam} sweep {k + 1} of sample {token}')
        if labels or eval_labels:
            add(_label_path(info, occ_root, bench),
                f'{bench.title} labels of sample {token}' + (' (evaluation)' if not labels else ''))
    return files


def _pipeline_steps(pipeline):
    """All steps of a Compose, nested ones (MultiScaleFlipAug3D.transforms) included."""
    steps = []
    for step in getattr(pipeline, 'transforms', None) or []:
        steps.append(step)
        inner = getattr(step, 'transforms', None)
        if inner is not None:
            steps.extend(_pipeline_steps(inner))
    return steps


def dataset_files(dataset, images=True, eval_labels=False):
    """{path: description} of what `dataset` (a NuScenesOccDataset) reads through its pipeline.

    Args:
        dataset: the dataset (its `data_infos`, `pipeline`, `occ_root`).
        images (bool): the images its pipeline loads (False: e.g. evaluating saved predictions).
        eval_labels (bool): the labels its evaluation reads.
    """
    from .pipelines.loading import LoadMultiViewImageFromFiles, LoadOccFromFile
    steps = _pipeline_steps(dataset.pipeline) if dataset.pipeline else []
    load_images = images and any(isinstance(step, LoadMultiViewImageFromFiles) for step in steps)
    # the multi-frame loaders declare themselves (loads_history_frames), GPU-decode variants included
    sweep_step = next((step for step in steps if getattr(step, 'loads_history_frames', False)), None)
    load_sweeps = images and sweep_step is not None and getattr(sweep_step, 'sweeps_num', 0) > 0
    occ_step = next((step for step in steps if isinstance(step, LoadOccFromFile)), None)
    benchmark = getattr(dataset, 'benchmark', DEFAULT_BENCHMARK)
    files = info_files(dataset.data_infos, images=load_images, sweeps=load_sweeps, labels=occ_step is not None,
                       occ_root=getattr(occ_step, 'occ_root', None),
                       benchmark=getattr(occ_step, 'benchmark', benchmark))
    if eval_labels:
        for path, what in info_files(dataset.data_infos, images=False, sweeps=False, labels=False,
                                     occ_root=getattr(dataset, 'occ_root', None), eval_labels=True,
                                     benchmark=benchmark).items():
            files.setdefault(path, what)
    return files


def _problem(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 'missing'
    except OSError as exc:
        return f'unreadable ({exc.strerror})'
    if not stat.S_ISREG(st.st_mode):
        return 'not a file'
    return 'empty' if st.st_size == 0 else None


def find_problems(files, progress=True, desc='data check', workers=16):
    """[(path, description, problem)] for the files of `files` ({path: description}) that are missing or empty."""
    paths = list(files)
    bar = None
    if progress and paths:
        from tqdm import tqdm
        # disable=None: only on a terminal (no bar lines in log files)
        bar = tqdm(total=len(paths), desc=desc, unit='file', dynamic_ncols=True, leave=False, mininterval=0.5,
                   disable=None)
    problems = []
    chunk = 512
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            for path, problem in zip(part, pool.map(_problem, part)):
                if problem is not None:
                    problems.append((path, files[path], problem))
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return problems


def _error(problems, total, source, hint):
    path, what, problem = problems[0]
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    relative = '' if osp.isabs(path) else f' [relative paths are read from {os.getcwd()}]'
    return DataCheckError(
        f'data check: {len(problems)} of {total} files named by {source} are missing or empty, e.g. '
        f'{path} ({problem}: {what}){more}{relative}\n'
        f'{hint} (tools/check_data.py lists them all; --skip-data-check skips this check)', problems)


DEFAULT_HINT = ('Extract the missing nuScenes / Occ3D archives, or regenerate the infos with gen_sweep_info.py '
                'from the folder the training starts in')


def check_dataset(dataset, name=None, images=True, eval_labels=False, progress=True, logger=None):
    """Raise DataCheckError when a file `dataset` reads is missing or empty; returns the number of files checked."""
    files = dataset_files(dataset, images=images, eval_labels=eval_labels)
    source = getattr(dataset, 'ann_file', None) or name or 'the dataset'
    problems = find_problems(files, progress=progress, desc=f'data check{f" ({name})" if name else ""}')
    if problems:
        raise _error(problems, len(files), source, DEFAULT_HINT)
    if logger is not None:
        logger.info(f'data check{f" ({name})" if name else ""}: {len(files)} files of {len(dataset)} samples '
                    f'present')
    return len(files)


def check_infos(ann_file, occ_root=None, sweeps=True, progress=True, benchmark=DEFAULT_BENCHMARK):
    """Check every image, sweep and label file an info pickle names; returns (number checked, problems)."""
    import pickle
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'info file not found: {ann_file}. Create it with gen_sweep_info.py')
    try:
        with open(ann_file, 'rb') as f:
            data = pickle.load(f)
    except Exception as exc:  # noqa: BLE001 (any unpickling failure is a bad file)
        raise DataCheckError(f'{ann_file}: not a readable info pickle ({type(exc).__name__}: {exc}); '
                             f'regenerate it with gen_sweep_info.py') from exc
    if not isinstance(data, dict) or 'infos' not in data:
        raise DataCheckError(f'{ann_file}: not an info pickle of gen_sweep_info.py (expected a dict with "infos")')
    files = info_files(data['infos'], sweeps=sweeps, occ_root=occ_root, benchmark=benchmark)
    return len(files), find_problems(files, progress=progress, desc=f'data check ({osp.basename(ann_file)})')
