"""edge_runtime: classify images with a TFLite model, without TensorFlow.

Where to look:
- `classify`: `Classifier`, one interpreter fed images, and scores to classes (`top_classes`);
- `preprocess`: the one definition of image preprocessing (with `fixed_point_resize`, MediaPipe's
  resize for models from elsewhere);
- `interpreter`: finding a TFLite interpreter package and building one interpreter per model;
- `batch` and `workers`: classifying a stream of files, in this process or in several;
- `model_file/`: a `.tflite` file read within limits and what it says about itself (start at
  `model_file.reader.ModelFile`), the manifest, labels files, and which model file is used;
- `sources/`: where images come from (files and folders, cameras) and the live camera loop;
- `cli`: `edge-classify`, a thin shell over the rest; `info` (--info), `bench` (--benchmark) and
  `output` (result lines) serve it;
- `errors`: the exceptions every part raises; `atomic`: writing files atomically.

Import the parts you need from their modules (`edge_runtime.classify`, `edge_runtime.preprocess`, ...);
this package imports nothing heavy on its own.
"""

__version__ = "0.1.0"
