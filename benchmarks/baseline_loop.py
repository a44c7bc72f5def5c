"""Baseline: a bare single-thread loop over a folder of images (open, convert, resize, set tensor,
invoke) that edge-classify's folder throughput is measured against.

Usage: baseline_loop.py MODEL FOLDER ANSWERS_FILE. Writes one "path<TAB>class index" line per
image to ANSWERS_FILE and prints the loop's own seconds (listing and interpreter set-up excluded).
"""
import os
import sys
import time

import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter

model, folder, answers_file = sys.argv[1:4]
paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
interpreter = Interpreter(model_path=model, num_threads=1)
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
size = (int(inp["shape"][2]), int(inp["shape"][1]))
scale, zero_point = inp["quantization"]
if inp["dtype"] == np.int8:
    assert abs(scale * 255.0 - 1.0) < 1e-6 and zero_point == -128, "expects x/255 int8 inputs"
is_int8 = inp["dtype"] == np.int8
answers = []
start = time.perf_counter()
for path in paths:
    pixels = np.asarray(Image.open(path).convert("RGB").resize(size), dtype=np.uint8)
    if is_int8:
        values = (pixels ^ np.uint8(0x80)).view(np.int8)  # p - 128: x/255 at scale 1/255, zero point -128
    else:
        values = pixels.astype(np.float32) / np.float32(255.0)
    interpreter.set_tensor(inp["index"], values[None])
    interpreter.invoke()
    answers.append(int(interpreter.get_tensor(out["index"])[0].argmax()))
seconds = time.perf_counter() - start
with open(answers_file, "w") as handle:
    handle.writelines(f"{path}\t{answer}\n" for path, answer in zip(paths, answers))
print(f"{len(paths)} {seconds:.6f}")
