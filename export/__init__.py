"""mex-export: a trained checkpoint -> an ONNX model or a TensorRT engine that mex-live trusts.

The artifact carries mex.artifact metadata (classes, feature encoding, model config, training) and is
checked against PyTorch (ONNX) or ONNX Runtime (TensorRT) on the real composite images before use.
"""
