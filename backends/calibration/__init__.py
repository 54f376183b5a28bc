"""Calibration: micro-benchmarks on this machine, scipy fits, a `HardwareProfile` with residuals.

`engramsim calibrate --backend cpu|cuda` measures the pieces the cost model prices on the
backend's own operations (the `Device` of backends/device.py, the stand-in blocks and the Engram
layer the real executor runs), then fits engramsim/kernels.py's formulas to the timings. Per group:
what is measured -> the profile fields fitted, by which formula.

- gather: sorted unique random rows through the executor's fetch worker (backends/fetch.py), each
  fetch after a stand-in decode step and waited for as an Engram layer waits; the gather span
  from its hand-over to the worker to its last row, vs rows and row bytes -> host.gather_rows_per_s,
  gather_overhead_us, dram_gbps, by `gather_seconds`.
- h2d: the same staged fetches, from the gather's end until the waiting thread resumed, vs bytes
  -> link.dma_latency_us, h2d_gbps (d2h_gbps = h2d), by `dma_seconds`.
- zero_copy: zero-copy fetches the same way, from the issue until the waiting thread resumed, vs
  rows and row bytes -> link.zero_copy_latency_us, zero_copy_gbps, transaction_bytes, by
  `zero_copy_seconds`.
- block: the stand-in blocks of a step (GQA attention + SwiGLU MLP; MoE for the MoE shape; MLA
  with mHC streams for the MLA shape) vs prefill tokens and decode batch x context, per block ->
  gpu.bf16_tflops, hbm_gbps, roofline_exponent, gemm_half_rows, layer_overhead_us and
  kernel_overhead_us, by `roofline` + the kernel overhead summed over `block_kernels` + the layer
  overhead (the shapes' different kernel counts tell the two fixed costs apart); and
  attention_efficiency, the decode KV reads' rate over the memory rate, where decode steps of one
  batch at several contexts tell it apart (else null, the reason in the description).
- engram: the Engram layer as the executor runs it (`engram_forward`, rows from the landing
  buffer) -> gpu.engram_overhead_us (joint fit with block), over `engram_kernels`.
- head: final norm + LM head + sampling -> its fixed cost (joint fit with block), over `head_kernels`.
- host: the executor's per-step host work (plan, step layout, fetch hand-off), the HOST spans of
  short real passes on a small built-in scenario at several batch sizes -> step_overhead_us (a +
  the head's fixed cost, paid at the start of every step) and step_overhead_per_seq_us (b), by
  t = a + b x sequences.

Copy/compute interference (a block timed while gathers loop on another thread) has no parameter
in the cost model: its slowdown goes into the profile's description and into the residual
"block_under_gather" (the model's error on those blocks).

Modules, in the order a calibration uses them: `machine` (who this machine is), `budgets` (how
much to measure, which cases), `harness` (timing as the executor's threads see it), `bench` (the
torch micro-benchmarks), `measurements` (what they recorded), `fits` (pure scipy fits, no torch),
`profile` (fits -> profile, and `calibrate()`).
"""
