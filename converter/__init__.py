"""converter: Keras model to float32 and full-int8 TFLite, and the quantization accuracy report.

`convert.py` turns `model.keras` into `.tflite` files with labels and preprocessing embedded;
`report.py` measures every format on the test set; `report_render.py` turns those numbers into
tables and pictures; `cli.py` is the thin `edge-convert` / `edge-report` shell. TensorFlow and
matplotlib are imported only inside the functions that need them.
"""
