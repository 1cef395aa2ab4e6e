"""OpenAI CLIP and OpenCLIP behind one interface, what names a model, the tokenizer, ONNX export and sessions."""
