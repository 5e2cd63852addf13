"""Per-strip kernels of the streaming engine, behind one interface (eager PyTorch, native CPU, Triton).

(Being built: see the engine-kernels issue.)
"""
