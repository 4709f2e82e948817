// Python bindings of the CUDA extension `_msmv_sampling_cuda` and the validation of its inputs.
// The kernels (msmv_sampling_cuda.cu, knn_cuda.cu) assume inputs checked here; models/csrc/msmv_cuda.py
// is the Python face (autograd Function, dtype casts, .contiguous()).
#include <torch/extension.h>

#include <vector>

namespace ops_csrc {

int msmv_max_levels();
at::Tensor msmv_forward_launch(const std::vector<at::Tensor>& feats, const at::Tensor& loc,
                               const at::Tensor& wts);
std::vector<at::Tensor> msmv_backward_launch(const std::vector<at::Tensor>& feats, const at::Tensor& loc,
                                             const at::Tensor& wts, const at::Tensor& grad_out,
                                             bool feat_grad);
at::Tensor knn1_launch(const at::Tensor& query, const at::Tensor& ref);
at::Tensor knn1_grid_launch(const at::Tensor& query, const at::Tensor& ref);

namespace {

// Direct callers of the extension get this hint; msmv_cuda.msmv_sampling_cuda never trips these.
constexpr const char* kFix = " (models.csrc.msmv_cuda.msmv_sampling_cuda casts and makes inputs contiguous)";

void check_sampling_inputs(const std::vector<at::Tensor>& feats, const at::Tensor& loc,
                           const at::Tensor& wts) {
  const int64_t max_levels = msmv_max_levels();
  TORCH_CHECK(!feats.empty() && static_cast<int64_t>(feats.size()) <= max_levels,
              "msmv_sampling: expected 1 to ", max_levels, " feature levels, got ", feats.size());
  const auto& f0 = feats[0];
  TORCH_CHECK(f0.is_cuda(), "msmv_sampling: features must be CUDA tensors, level 0 is on ", f0.device(),
              "; models.csrc.wrapper.msmv_sampling runs the PyTorch fallback for CPU tensors");
  const auto dtype = f0.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "msmv_sampling: features must be float32, float64, float16 or bfloat16, got ", dtype);
  for (size_t l = 0; l < feats.size(); ++l) {
    const auto& f = feats[l];
    TORCH_CHECK(f.dim() == 5, "msmv_sampling: feature level ", l,
                " must be channel-last [BB, N, H, W, C], got shape ", f.sizes());
    TORCH_CHECK(f.device() == f0.device(), "msmv_sampling: feature level ", l, " is on ", f.device(),
                " but level 0 is on ", f0.device(), "; move all inputs to one GPU");
    TORCH_CHECK(f.scalar_type() == dtype, "msmv_sampling: all feature levels must share one dtype; level ",
                l, " is ", f.scalar_type(), ", level 0 is ", dtype);
    TORCH_CHECK(f.size(0) == f0.size(0) && f.size(1) == f0.size(1) && f.size(4) == f0.size(4),
                "msmv_sampling: feature level ", l, " has shape ", f.sizes(), " but BB, N, C of level 0 are ",
                f0.size(0), ", ", f0.size(1), ", ", f0.size(4), "; every level must share them");
    TORCH_CHECK(f.size(2) >= 1 && f.size(3) >= 1 && f.size(2) * f.size(3) * f.size(4) <= INT32_MAX,
                "msmv_sampling: feature level ", l, " has an empty or oversized map: H x W x C = ", f.size(2),
                " x ", f.size(3), " x ", f.size(4), " must be between 1 and 2^31-1 elements");
    TORCH_CHECK(f.is_contiguous(), "msmv_sampling: feature level ", l, " must be contiguous; call .contiguous()",
                kFix);
  }
  TORCH_CHECK(f0.size(1) >= 1 && f0.size(1) <= INT32_MAX, "msmv_sampling: need at least one view, got N = ",
              f0.size(1));
  TORCH_CHECK(f0.size(4) >= 1 && f0.size(4) <= INT32_MAX, "msmv_sampling: need at least one channel, got C = ",
              f0.size(4));

  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(loc.device() == f0.device() && wts.device() == f0.device(),
              "msmv_sampling: sampling_locations (", loc.device(), ") and scale_weights (", wts.device(),
              ") must be on the features' device ", f0.device());
  TORCH_CHECK(loc.dim() == 4 && loc.size(3) == 3,
              "msmv_sampling: sampling_locations must be [BB, Q, P, 3] (u, v, view/(N-1)), got shape ",
              loc.sizes());
  TORCH_CHECK(loc.size(0) == f0.size(0), "msmv_sampling: sampling_locations has BB = ", loc.size(0),
              " but the features have BB = ", f0.size(0));
  TORCH_CHECK(loc.size(1) <= INT32_MAX && loc.size(2) <= INT32_MAX,
              "msmv_sampling: Q and P must each be below 2^31, got ", loc.size(1), " and ", loc.size(2));
  TORCH_CHECK(wts.dim() == 4 && wts.size(0) == loc.size(0) && wts.size(1) == loc.size(1) &&
                  wts.size(2) == loc.size(2) && wts.size(3) == static_cast<int64_t>(feats.size()),
              "msmv_sampling: scale_weights must be [BB, Q, P, L] = [", loc.size(0), ", ", loc.size(1), ", ",
              loc.size(2), ", ", feats.size(), "], got shape ", wts.sizes());
  TORCH_CHECK(loc.scalar_type() == acc && wts.scalar_type() == acc, "msmv_sampling: with ", dtype,
              " features, sampling_locations and scale_weights must be ", acc, ", got ", loc.scalar_type(),
              " and ", wts.scalar_type(), kFix);
  TORCH_CHECK(loc.is_contiguous() && wts.is_contiguous(),
              "msmv_sampling: sampling_locations and scale_weights must be contiguous; call .contiguous()");
}

at::Tensor msmv_forward(const std::vector<at::Tensor>& feats, const at::Tensor& loc, const at::Tensor& wts) {
  check_sampling_inputs(feats, loc, wts);
  return msmv_forward_launch(feats, loc, wts);
}

std::vector<at::Tensor> msmv_backward(const std::vector<at::Tensor>& feats, const at::Tensor& loc,
                                      const at::Tensor& wts, const at::Tensor& grad_out, bool feat_grad) {
  check_sampling_inputs(feats, loc, wts);
  const auto& f0 = feats[0];
  const std::vector<int64_t> expect{loc.size(0), loc.size(1), f0.size(4), loc.size(2)};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expect), "msmv_sampling backward: grad_out must be [BB, Q, C, P] = ",
              at::IntArrayRef(expect), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == f0.device() && grad_out.scalar_type() == f0.scalar_type(),
              "msmv_sampling backward: grad_out must be ", f0.scalar_type(), " on ", f0.device(), ", got ",
              grad_out.scalar_type(), " on ", grad_out.device());
  TORCH_CHECK(grad_out.is_contiguous(), "msmv_sampling backward: grad_out must be contiguous; call .contiguous()");
  return msmv_backward_launch(feats, loc, wts, grad_out, feat_grad);
}

void check_knn_inputs(const at::Tensor& query, const at::Tensor& ref) {
  for (const auto* t : {&query, &ref}) {
    const char* name = t == &query ? "query" : "ref";
    TORCH_CHECK(t->is_cuda(), "knn1_cuda: `", name, "` must be a CUDA tensor, got one on ", t->device(),
                "; use models.knn.knn1 for CPU tensors");
    TORCH_CHECK(t->dim() == 2 && t->size(1) == 3, "knn1_cuda: `", name, "` must be [N, 3] (xyz per row), got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kFloat, "knn1_cuda: `", name, "` must be float32, got ",
                t->scalar_type(), "; call .float()");
    TORCH_CHECK(t->is_contiguous(), "knn1_cuda: `", name, "` must be contiguous; call .contiguous()");
  }
  TORCH_CHECK(query.device() == ref.device(), "knn1_cuda: query is on ", query.device(), " but ref on ",
              ref.device());
  TORCH_CHECK(ref.size(0) >= 1, "knn1_cuda: the reference set is empty: a nearest neighbour needs at least "
              "one reference point");
}

at::Tensor knn1(const at::Tensor& query, const at::Tensor& ref) {
  check_knn_inputs(query, ref);
  return knn1_launch(query, ref);
}

at::Tensor knn1_grid(const at::Tensor& query, const at::Tensor& ref) {
  check_knn_inputs(query, ref);
  return knn1_grid_launch(query, ref);
}

}  // namespace
}  // namespace ops_csrc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "OPS CUDA ops: multi-scale multi-view bilinear sampling (spec 5.1) and exact 1-NN search";
  m.def("msmv_forward", &ops_csrc::msmv_forward,
        "features L x [BB, N, H_l, W_l, C], locations [BB, Q, P, 3], weights [BB, Q, P, L] -> [BB, Q, C, P]",
        py::arg("mlvl_feats"), py::arg("sampling_locations"), py::arg("scale_weights"));
  m.def("msmv_backward", &ops_csrc::msmv_backward,
        "-> [grad_locations, grad_weights, grad_feat_0, ..., grad_feat_{L-1}] (feature grads only if feat_grad)",
        py::arg("mlvl_feats"), py::arg("sampling_locations"), py::arg("scale_weights"), py::arg("grad_output"),
        py::arg("feat_grad"));
  m.def("knn1", &ops_csrc::knn1,
        "query [M, 3] fp32, ref [K, 3] fp32 -> int64 [M] nearest reference index, scanning every pair",
        py::arg("query"), py::arg("ref"));
  m.def("knn1_grid", &ops_csrc::knn1_grid, "knn1 through a uniform grid of the references", py::arg("query"),
        py::arg("ref"));
  m.attr("MAX_LEVELS") = ops_csrc::msmv_max_levels();
}
