"""Deployment: the towers as ONNX files (:mod:`~deepsem.deploy.export`) and onnxruntime as a backend of deepsem's
own models (:mod:`~deepsem.deploy.runtime`). The ``onnx`` extra brings onnx and onnxruntime."""
