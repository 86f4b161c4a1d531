"""One command for the day a GPU is available: ``python -m bench.gpu_check --out DIR`` (``make gpu-check OUT=DIR``).

On a CUDA machine (written for torch 2.11 + Triton 3.6 preinstalled, no network, after
``pip install --no-deps --no-build-isolation -e .``) it runs, inside a time budget (``--budget``, 390 s by default,
so that with the editable install and the interpreter start-up the whole command stays under 8 minutes):

1. ``warmup``: JIT-compiles every kernel variant the later sections launch, in parallel worker processes on tiny
   inputs (Triton's on-disk cache then serves the main process), so compile time is spread over the CPU cores;
2. ``accuracy``: float16 / bfloat16 / float32 exchange and warp loss (value and both gradients) against the float64
   dense reference with the accuracy rule of tests/_tolerance.py (:func:`error_bound`);
3. ``determinism``: the DVE chain twice, bitwise equal outputs and gradients (bfloat16, float32);
4. ``memory``: forward + backward at N = M = 128², peak ``torch.cuda.max_memory_allocated`` against the size of
   one dense ``N x M`` float32 matrix;
5. ``kernels``: (u, v) pairs/s of each of the six kernels (bf16, float32; C = 64, N = M = 4096, B = 16), beside the
   static report's modelled H100 bound, raw and calibrated (``bench/results/static/kernel_report.json``);
6. ``dve``: the DVE loss forward + backward, the drop-in against dense (``bench.providers``), at 48², 64², 128²,
   with peak memory (a dense out-of-memory is recorded as ``oom``): bf16, and float32 under both matmul precisions
   (``dve_kernels``: "highest", IEEE dots; ``dve_kernels-tf32``: "high", TF32 dots).

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (GPU, driver, torch, Triton named at the top). A section
that would not fit in the remaining budget is recorded as skipped; an exception in one is recorded and the others
still run. Exit status: 0 when every section ran and every check passed, 1 otherwise, 2 without CUDA (one line).

``--plan`` prints what would run and checks every import and the model file, without a GPU.

The package, by concern: ``common`` (the sections, the shapes, the coupling to ``dve_kernels.ops`` and the float32
dot choice), ``accuracy`` (sections 2 and 3), ``timing`` (sections 1, 4, 5 and 6), ``report`` (the environment and
the markdown) and ``run`` (the budget, the command line, ``main``).
"""
