"""Baseline: the minimal ai-edge-litert script edge-classify's cold start is measured against."""
import sys
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1]); interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
pixels = np.asarray(Image.open(sys.argv[2]).convert("RGB").resize((inp["shape"][2], inp["shape"][1])))
scale, zero = inp["quantization"]; x = pixels / 255.0 if not scale else np.round(pixels / 255.0 / scale + zero)
interpreter.set_tensor(inp["index"], x[None].astype(inp["dtype"])); interpreter.invoke()
print(int(np.argmax(interpreter.get_tensor(out["index"]))))
