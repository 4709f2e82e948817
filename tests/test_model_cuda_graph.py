"""The CUDA-graph replay of the decoder (inference fast mode) computes the same outputs as eager mode."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def make_inputs(seed, B=1, Q=40, T=2, N=6, C=256, sizes=((32, 88), (16, 44), (8, 22), (4, 11))):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(B, Q, 1, 3, generator=g)
    feat = torch.zeros(B, Q, C)
    feats = [torch.randn(B, T * N, C, h, w, generator=g) for h, w in sizes]
    # a camera looking along +x from the origin for every view, 704x256 pixels
    k = np.array([[500., 0, 352, 0], [0, 500., 128, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    axes = np.array([[0., -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    metas = [dict(lidar2img=[(k @ axes).astype(np.float32)] * (T * N), ego2lidar=np.eye(4, dtype=np.float32),
                  img_shape=[(256, 704, 3)] * (T * N))]
    return points.cuda(), feat.cuda(), [f.cuda() for f in feats], metas


def test_graph_replay_equals_eager():
    from models.ops_transformer import OPSTransformer
    torch.manual_seed(0)
    transformer = OPSTransformer(embed_dims=256, num_frames=2, num_points=4, num_layers=3, num_refines=[1, 4, 8],
                                 pc_range=[-40, -40, -1, 40, 40, 5.4]).cuda().eval()
    transformer.init_weights()
    decoder = transformer.decoder
    with torch.no_grad():
        for seed in (0, 1, 2):  # the first call captures, the next ones replay with new inputs
            inputs = make_inputs(seed)
            decoder.use_cuda_graph = False
            eager_cls, eager_pts = transformer(*inputs)
            decoder.use_cuda_graph = True
            graph_cls, graph_pts = transformer(*inputs)
            for a, b in zip(eager_cls + eager_pts, graph_cls + graph_pts):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert len(decoder._graphs) == 1
