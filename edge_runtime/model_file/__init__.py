"""A `.tflite` file, read within limits, and what it says about itself.

Start at `reader.ModelFile`: opened once from a path, it hands out the file's bytes, our embedded
metadata, the official TFLite metadata, the labels, the input rule, the sha256 and the manifest
check, each read when first asked for. Below it, one module per part of the file:

- `limits`: how much of a model file, and of the files beside it, is ever read;
- `bounded_zip`: the zip archive appended to a model, read within those limits;
- `flatbuffer_check`: bounds-checked reading of flatbuffers from outside;
- `metadata`: our labels and preprocessing, embedded in the appended archive (written by edge-convert);
- `official_metadata` (with the flatc-generated `metadata_schema_generated`): TFLite's own metadata;
- `conventions`: the preprocessing and labels a model gets from what its file says, else its ecosystem;
- `labels`: labels files; `manifest`: manifest.json, the size and sha256 of exported models;
- `choose`: which model file `edge-classify` uses when the user does not say.

Nothing is imported here: `import edge_runtime.model_file.metadata` loads only what it needs.
"""
