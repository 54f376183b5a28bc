"""Transport plugins: how missing rows travel to the GPU, as a pipeline of stages."""

from engramsim.plugins.transport import staged, zero_copy  # noqa: F401
