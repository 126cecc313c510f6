"""Neural network modules. No file I/O here: weights are loaded by artgen.interop.weights."""
