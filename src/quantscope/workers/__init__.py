"""Scripts quantscope runs inside the tool environments of ``quantscope.toolenv``."""
