"""models/opus_fusion.py and models/opus_fusion_transformer.py on the tiny Fusion model (tests/tiny_fusion.py).

* A decoder layer mixes the V1 image samples (frames first) and the map samples (last): its mixing input equals
  V1's sampling of the same parameters and an independent float64 bilinear read of the map.
* Training: the loss terms of a LiDAR-initialised head, finite; gradients reach both branches.
* Test: online (history features from the cache) and offline give the same occupancy; the LiDAR map changes the
  prediction; the model is not graph-capturable and an execution policy leaves its results unchanged.
* Bad input: points of another dimension, no points, a missing meta -> one-line errors naming them.
"""
import numpy as np
import pytest
import torch

from models.ops_transformer import OPSSampling
from test_opus_fusion_head import U32, bilinear_reference
from tiny_detector import PC_RANGE, gt
from tiny_fusion import BEV_HW, EMBED, N, T, build, fusion_metas, images, random_points


def train_inputs(B=2):
    img = torch.stack([torch.cat([images(t, seed=b) for t in range(T)]) for b in range(B)])
    sem, mask = gt(B)
    return dict(img=img, img_metas=[fusion_metas(list(range(T))) for _ in range(B)],
                points=[random_points(b) for b in range(B)], voxel_semantics=sem, mask_camera=mask)


def test_layer_mixes_the_frames_then_the_map():
    model = build().eval()
    head = model.pts_bbox_head
    decoder = head.transformer.decoder
    layer = decoder.decoder_layers[2]                      # 2 points per query in: a non-zero sampling spread
    assert layer.mixing is layer.img_pts_mixing and layer.img_pts_mixing.in_points == (T + 1) * 2 == \
        layer.img_pts_mixing.out_points
    assert not any(k.startswith('mixing.') for k in layer.state_dict())
    data = train_inputs(1)
    seen = {}
    layer.img_pts_mixing.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    with torch.no_grad():
        feats = model.extract_feat(data['img'], data['img_metas'])
        bev = model.final_conv(model.extract_pts_feat(data['points'])[0])
        assert bev.shape == (1, EMBED) + BEV_HW
        head.forward(feats, bev, data['points'], data['img_metas'])
    x = seen['x']
    G, P = decoder.num_groups, 2
    assert x.shape == (1, head.num_query, G, (T + 1) * P, EMBED // G)
    # what the layer sampled from: its input points and features, recomputed by the decoder's own first layers
    with torch.no_grad():
        query_points = head.initial_points(data['points'])
        query_feat = query_points.new_zeros(1, head.num_query, EMBED)
        occ2img, (h, w) = head.transformer.image_geometry(data['img_metas'], 'cpu')
        occ2points = head.transformer.points_geometry(data['img_metas'], 'cpu')
        layout, bev_layout = head.transformer.sampling_layout(feats), head.transformer.bev_sampling_layout(bev)
        for previous in decoder.decoder_layers[:2]:
            query_feat, _, query_points = previous(query_points, query_feat, layout, bev_layout, occ2img, occ2points,
                                                   h, w)
        query_feat = query_feat + layer.position_encoder(query_points.flatten(2))
        v1 = OPSSampling(EMBED, T, N, G, P, 4, PC_RANGE)
        v1.load_state_dict(layer.sampling.state_dict())
        image = v1(query_points, query_feat, layout, occ2img, h, w)
        points = layer.sampling.sampling_points(query_points, query_feat).view(1, head.num_query, G, P, 3)
    # the image part is V1's computation on the same tensors: bitwise equal
    assert torch.equal(x[:, :, :, :T * P], image)
    want = bilinear_reference(bev, points, occ2points, PC_RANGE)
    # as test_opus_fusion_head's bound for the 8 x 8 map (occ2points = I: no transform error)
    tol = (2 * 2 * 8 * 1.5 * (max(BEV_HW) - 1) + 8) * U32 * float(bev.abs().max())
    np.testing.assert_allclose(x[:, :, :, T * P:].double().numpy(), want, rtol=0, atol=tol)
    assert np.abs(want).max() > 100 * tol
    with pytest.raises(ValueError, match='mixing_out_points=32 is not a setting of its decoder'):
        build(pts_bbox_head=fusion_head_with(mixing_out_points=32))


def fusion_head_with(**transformer):
    from tiny_fusion import fusion_cfg
    head = fusion_cfg()['pts_bbox_head']
    head['transformer'].update(transformer)
    return head


def test_training_step_reaches_both_branches():
    model = build().train()
    data = train_inputs()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    np.random.seed(0)
    out = model.train_step(data, optimizer)
    assert set(out['log_vars']) == {'loss_cls', 'loss_pts', 'd0.loss_cls', 'd0.loss_pts', 'd1.loss_cls',
                                    'd1.loss_pts', 'loss'}
    assert torch.isfinite(out['loss']) and out['num_samples'] == 2
    out['loss'].backward()
    layers = model.pts_bbox_head.transformer.decoder.decoder_layers
    # (mmdet's ResNet starts every residual branch's last BN at 0, so at initialisation only the shortcuts and
    # that BN's own parameters receive gradients)
    for name, param in (('image backbone', model.img_backbone.layer3[0].downsample[0].weight),
                        ('FPN', model.img_neck.fpn_convs[0].conv.weight),
                        ('sparse encoder', model.pts_middle_encoder.conv_input[0].weight),
                        ('SECOND', model.pts_backbone.blocks[0][0].weight),
                        ('final conv', model.final_conv.conv.weight),
                        ('mixing', layers[0].img_pts_mixing.parameter_generator.bias)):
        assert param.grad is not None and param.grad.abs().sum() > 0, f'no gradient in the {name}'


def test_online_equals_offline_and_the_map_matters():
    model = build().eval()
    torch.nn.init.constant_(model.pts_bbox_head.transformer.decoder.decoder_layers[-1].cls_branch[-1].bias, 4.0)
    seq = [[0, 0], [1, 0]]                        # the first sample of a scene repeats its own frame
    with torch.no_grad():
        for i, frames in enumerate(seq):
            points = [random_points(10 + i)]
            online = model(img=[images(frames[0])[None]], img_metas=[[fusion_metas(frames)]], points=[points],
                           return_loss=False)[0]
            full = torch.cat([images(t) for t in frames])[None]
            offline = model(img=[full], img_metas=[[fusion_metas(frames)]], points=[points], return_loss=False)[0]
            assert len(online['sem_pred']) > 0
            np.testing.assert_array_equal(online['occ_loc'], offline['occ_loc'])
            np.testing.assert_array_equal(online['sem_pred'], offline['sem_pred'])
        # the same points (so the same initial points) with other intensities: another map, other logits
        brighter = points[0].clone()
        brighter[:, 3] += 50
        metas = [fusion_metas(frames)]
        feats = model.extract_feat(full, metas)
        outs = [model.pts_bbox_head(feats, model.final_conv(model.extract_pts_feat(p)[0]), p, metas)
                for p in (points, [brighter])]
    assert torch.equal(outs[0]['init_points'], outs[1]['init_points'])
    assert not torch.equal(outs[0]['all_cls_scores'][-1], outs[1]['all_cls_scores'][-1])


def test_not_graph_capturable_and_an_execution_policy_keeps_the_results():
    from accel import accelerate
    from accel.policy import policy_from_config
    model = build().eval()
    assert model.GRAPH_CAPTURABLE == frozenset()
    torch.nn.init.constant_(model.pts_bbox_head.transformer.decoder.decoder_layers[-1].cls_branch[-1].bias, 4.0)
    full = torch.cat([images(1), images(0)])[None]
    inputs = dict(img=[full], img_metas=[[fusion_metas([1, 0])]], points=[[random_points(5)]], return_loss=False)
    with torch.no_grad():
        bare = model(**inputs)[0]
        accelerate(model, policy_from_config(None, fast=True))
        fast = model(**inputs)[0]
    np.testing.assert_array_equal(bare['occ_loc'], fast['occ_loc'])
    np.testing.assert_array_equal(bare['sem_pred'], fast['sem_pred'])


def test_bad_inputs_name_the_problem():
    model = build().train()
    data = train_inputs(1)
    with pytest.raises(ValueError, match=r'points of sample 0 must be \[N, >= 5\] .* got \(3000, 4\)'):
        model(**dict(data, points=[data['points'][0][:, :4]]))
    with pytest.raises(ValueError, match='needs points and voxel_semantics'):
        model(**dict(data, points=None))
    metas = [dict(data['img_metas'][0])]
    del metas[0]['ego2points']
    with pytest.raises(KeyError, match='has no "ego2points" .*LiDARToOccSpace'):
        model(**dict(data, img_metas=metas))
    model.eval()
    full = data['img'][:, :T * N]
    with torch.no_grad(), pytest.raises(ValueError, match="points=\\[list of tensors\\]"):
        model(img=[full], img_metas=[data['img_metas']], return_loss=False)
    with pytest.raises(ValueError, match='pts_feat_dim=16 .* must equal the decoder\'s embed_dims=32'):
        build(pts_feat_dim=16)
