"""OPUS-V2 trains the same function for every split of a batch (docs/opusv2.md, "Losses" and "The CPD module"):
one process with a batch of two gives the mean of two separate one-sample runs (the authors' 8 GPUs x 1) in every
loss term, in the gradient of every parameter and in the CPD module's BatchNorm running statistics. Float64 on the
CPU (the tiny V2 of tiny_opusv2.py, `.double()`, dropout and the photometric distortion off)."""
import copy

import numpy as np
import pytest
import torch
from mmcv import Config
from mmdet.models import build_detector

import models  # noqa: F401
from camera_rig import pinhole_rig
from tiny_detector import no_checkpointing
from tiny_opusv2 import TINY_OPUSV2_MODEL_CONFIG

T, N, H, W = 2, 6, 64, 160
U64 = 2.0 ** -53   # unit roundoff of float64
# Tolerances. The batched and the one-sample runs do the same float64 operations on each sample, except that
# matrix products and convolutions over more rows may be blocked differently and sum in another order: a
# reordered sum of K terms moves by <= K u of the sum of its absolute terms, K <= 4608 (the 3x3x512 convolutions
# of ResNet-18), i.e. <= 5.1e-13. Along the longest chain (about 40 such products: the backbone's 20 convolutions
# forward and backward, then the decoder and the CPD module) these add up to ~2e-11 relative; the loss sums and
# the batch mean add a few u. Losses (forward only, half the chain): 1e-11 relative. Gradients, normwise per
# parameter (an elementwise check would fail on entries that cancel to ~0): 2e-11 with up to 5x for cancellation
# in the sums over the samples' points, 1e-10. The faults this test exists to catch (normalisers pooled over the
# batch, BatchNorm statistics over all samples' points) move the losses by >1e-4 and the gradients by >50%
# (measured on this scene).
LOSS_REL = 1e-11
GRAD_REL = 1e-10
assert LOSS_REL > 4608 * U64 * 20 / 2


def tiny_float64_model(head_type):
    cfg = Config.fromstring(TINY_OPUSV2_MODEL_CONFIG.format(occ_root='unused'), '.py')
    cfg.model.data_aug.img_color_aug = False          # random draws per image: not part of the function
    cfg.model.pts_bbox_head.type = head_type
    cfg.model.pts_bbox_head.transformer.update(attn_drop=0.0, ffn_drop=0.0)
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    model.init_weights()
    return no_checkpointing(model).double().train()


def sample(k):
    """Two distinct samples: other images, GT (sample 0 low and dense, sample 1 higher and sparser; both reached by
    the untrained points, so both have CPD voxels occupied in GT), visibility and GT flip."""
    rs = np.random.RandomState(k)
    rig = pinhole_rig([0, 1], [0, -55, 55, 180, 110, -110], H, W, W / 2, 0.5).astype(np.float32)
    meta = dict(filename=[f's{k}_f{t}_{n}.jpg' for t in range(T) for n in range(N)], ego2img=list(rig),
                ego2occ=np.diag([-1.0, 1.0, 1.0, 1.0]) if k == 0 else np.eye(4),
                img_timestamp=[0.5 * t for t in range(T) for _ in range(N)])
    img = torch.from_numpy(rs.randint(0, 256, (1, T * N, 3, H, W))).to(torch.uint8)
    sem = np.full((1, 200, 200, 16), 17, np.uint8)
    if k == 0:
        sem[0, ::2, ::2, 0:4] = rs.randint(0, 17, size=(100, 100, 4))
    else:
        sem[0, ::3, 100::2, 3:12] = rs.randint(0, 17, size=(67, 50, 9))
    mask = torch.from_numpy(rs.rand(1, 200, 200, 16) < 0.5)
    return img, meta, torch.from_numpy(sem), mask


def train_step(model, samples):
    """Losses (float), gradients and buffers after one forward and backward pass of `samples` as one batch."""
    model.zero_grad()
    losses = model(img=torch.cat([s[0] for s in samples]), img_metas=[copy.deepcopy(s[1]) for s in samples],
                   voxel_semantics=torch.cat([s[2] for s in samples]), mask_camera=torch.cat([s[3] for s in samples]))
    sum(losses.values()).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return {k: v.item() for k, v in losses.items()}, grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize('head_type', ['OPUSV2Head', 'OPUSV2DCDHead'])
def test_a_batch_of_two_is_the_mean_of_two_one_sample_runs(head_type):
    model = tiny_float64_model(head_type)
    samples = [sample(0), sample(1)]
    both = train_step(copy.deepcopy(model), samples)
    single = [train_step(copy.deepcopy(model), [s]) for s in samples]

    losses, (l0, l1) = both[0], [s[0] for s in single]
    assert len(losses) == 5
    for key, value in losses.items():
        assert value == pytest.approx((l0[key] + l1[key]) / 2, rel=LOSS_REL), key
    # distinct samples, or a pooled normalisation could not be told apart from the per-sample one
    assert abs(l0['loss_cls'] - l1['loss_cls']) > 1e-3 * abs(l0['loss_cls'])
    assert abs(l0['loss_pts'] - l1['loss_pts']) > 1e-3 * abs(l0['loss_pts'])

    grads, (g0, g1) = both[1], [s[1] for s in single]
    checked = 0
    for name, grad in grads.items():
        if grad is None:   # frozen (the backbone's stem and first stage): no gradient in any run
            assert g0[name] is None and g1[name] is None, name
            continue
        mean = (g0[name] + g1[name]) / 2
        assert (grad - mean).norm() <= GRAD_REL * mean.norm(), name
        checked += mean.norm() > 0
    assert checked > 100   # every trainable tensor of backbone, FPN, decoder and CPD modules with a gradient
    for prefix in ('pts_bbox_head.densifiers.0.pfn_layers.0.', 'pts_bbox_head.densifiers.1.cls_branch.0.',
                   'pts_bbox_head.transformer.', 'img_neck.', 'img_backbone.layer4.'):
        assert any(n.startswith(prefix) and g is not None and g.abs().sum() > 0 for n, g in grads.items()), prefix

    # BatchNorm buffers: the running statistics move by the mean of the samples' statistics, which is the mean
    # of two one-sample updates (the update is linear in them); the step counters agree
    buffers, (b0, b1) = both[2], [s[2] for s in single]
    for name, buf in buffers.items():
        if buf.is_floating_point():
            assert torch.allclose(buf, (b0[name] + b1[name]) / 2, rtol=LOSS_REL, atol=0), name
        else:
            assert torch.equal(buf, b0[name]) and torch.equal(buf, b1[name]), name
    assert int(buffers['pts_bbox_head.densifiers.0.pfn_layers.0.norm.num_batches_tracked']) == 1
