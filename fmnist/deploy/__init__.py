"""Using a trained network outside training: classifying image files, exporting to ONNX or TorchScript."""
