"""Transport plugins: how missing rows travel to the GPU, as a pipeline of stages."""

from engramsim.plugins.transport import nvme_direct, row_copy, staged, staged_batched, zero_copy, zero_copy_sm  # noqa: F401
