"""converter: Keras model to float32 and full-int8 TFLite, and the quantization accuracy report.

- `convert.py`: `convert_model`, the conversion as a whole: each variant converted, its labels,
  preprocessing and official metadata attached and checked, the files and `manifest.json` written.
- `variants.py`: the variants by name (float32, int8, uint8, dynamic, float16) and what each is.
- `artifacts.py`: the file names of a training folder, and the hints naming the command that
  writes a missing file.
- `source_model.py`: the Keras model checked, loaded, and its labels and preprocessing.
- `calibration.py`: the int8 calibration images, drawn with a seed from the training images.
- `tflite_export.py`: one variant through the TFLite converter, and the int8 tensor check.
- `logit_range.py`: the range int8's logits are quantized over.
- `official_metadata.py`: the official TFLite metadata written into every file.
- `smoke_image.py`: the smoke-test image bundled with each export, one calibration file every model labels right.
- `data.py`: which data set to load (options, else training.json) and loading it as training did.
- `report.py` measures every format on the test set; `report_render.py` turns those numbers into
  tables and pictures.
- `cli.py`: the thin `edge-convert` / `edge-report` shell.

TensorFlow and matplotlib are imported only inside the functions that need them.
"""
