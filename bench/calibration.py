"""A kernel of published H100 speed for calibrating the static kernel report's model (bench/kernel_report.py).

``_attention_fwd_kernel`` is a FlashAttention-2-style forward (non-causal, head dimension 64, bfloat16), written
in the style of Triton's fused-attention tutorial (``python/tutorials/06-fused-attention.py``): one program per
``BLOCK_M`` query rows of one (batch, head), an online softmax in base 2 over ``BLOCK_N``-row key/value tiles, two
tensor-core dots per tile. It is never launched here: ``kernel_report.calibrate()`` compiles it ahead of time for
sm_90 and applies the same model as to the DVE kernels, so that predicted can be put beside published.

Published forward speeds at head dimension 64, H100 SXM5, 16-bit, non-causal, long sequences, as (u, v) pairs/s
(one pair = one query-key product: 4·d = 256 flops):

- Triton's fused-attention tutorial: about 1.6e12 pairs/s (~410 TFLOP/s), the figure issue 11 quotes from the
  tutorial's benchmark;
- FlashAttention-3 (Shah et al., "FlashAttention-3: Fast and Accurate Attention with Asynchrony and
  Low-precision", arXiv:2407.08608, forward-pass benchmark, head dimension 64, FP16, non-causal): up to ~497
  TFLOP/s, about 1.9e12 pairs/s.

The calibration factor is the model's bound over the Triton tutorial's measured speed: same compiler, same kind
of code; FA3 is hand-scheduled (warp specialisation, ping-pong softmax/GEMM overlap) and is shown for scale.
"""

from __future__ import annotations

import triton
import triton.language as tl

HEAD_DIM = 64
PAIR_FLOPS = 4 * HEAD_DIM
PUBLISHED_PAIRS_PER_S = {
    "triton_tutorial": {"pairs_per_s": 1.6e12, "tflops": 1.6e12 * PAIR_FLOPS / 1e12,
                        "source": "Triton tutorial 06-fused-attention.py benchmark, H100, d = 64, fp16, forward, "
                                  "non-causal (as quoted in issue 11)"},
    "flashattention3": {"pairs_per_s": 497e12 / PAIR_FLOPS, "tflops": 497.0,
                        "source": "FlashAttention-3, arXiv:2407.08608, forward benchmark, H100 SXM5, head dim 64, "
                                  "FP16, non-causal, seqlen 16k"},
}
CALIBRATE_AGAINST = "triton_tutorial"
# the tutorial's usual forward tiles at d = 64 (its autotuner picks among such configurations)
CONFIGS = ({"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
           {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3})


@triton.jit
def _attention_fwd_kernel(Q, K, V, Out, N_CTX, qk_scale_log2e,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Out = softmax(Q K^T · scale) V for (batch·heads, N_CTX, HEAD_DIM) contiguous tensors; N_CTX % BLOCK_N == 0."""
    start_m = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    base = head * N_CTX * HEAD_DIM
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + base + rows[:, None] * HEAD_DIM + dims[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, N_CTX, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(K + base + cols[:, None] * HEAD_DIM + dims[None, :])
        s = tl.dot(q, tl.trans(k))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale_log2e)
        p = tl.exp2(s * qk_scale_log2e - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + base + cols[:, None] * HEAD_DIM + dims[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    tl.store(Out + base + rows[:, None] * HEAD_DIM + dims[None, :], (acc / l_i[:, None]).to(Out.dtype.element_ty))


def specializations():
    """The calibration kernel as report Specializations (bf16, d = 64), one per tutorial-like configuration."""
    from dve_kernels.ops import Specialization

    specs = []
    for config in CONFIGS:
        constexprs = {"HEAD_DIM": HEAD_DIM, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"]}
        signature = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "N_CTX": "i32",
                     "qk_scale_log2e": "fp32", "HEAD_DIM": "constexpr", "BLOCK_M": "constexpr",
                     "BLOCK_N": "constexpr"}
        name = f"attention_fwd_bf16_d{HEAD_DIM}_{config['BLOCK_M']}x{config['BLOCK_N']}_w{config['num_warps']}"
        specs.append(Specialization(name, _attention_fwd_kernel, signature, constexprs, config["num_warps"],
                                    config["num_stages"], ("Q", "K", "V", "Out")))
    return specs
