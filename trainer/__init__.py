"""trainer: build and train a network of the registry on CIFAR-10, an image-folder tree or the CIFAR archive.

Where to look, by concern:
- data: `sources` (one module per source, and `load_dataset`, which picks one), `dataset` (the
  Dataset type), `decoding` (decoding files in a process pool) with `decoded_cache` (its on-disk
  cache), `resizing`, `progress` (what long work tells the person; the converter uses it too);
- the recipe: `models` (the networks, one module per family, and the table of their defaults;
  `models.cnn` is the documented CNN), `config` (TrainConfig), `phases` (frozen backbone,
  then fine-tuning), `validation` (the held-out split), `batches` (streamed batches, augmentation and
  the fit data), `batch_norm`, `distribution` (`--distribute`), `keep` (which epoch is kept);
- the run: `train` (`train()`, the recipe in order), `epochs` (the per-epoch callback and status
  line), `checkpoint` (checkpoints, resume, and what a run folder holds), `outputs` (model.keras,
  labels.txt, accuracy.png, training.json), `plots` (accuracy curves);
- the shell: `cli` (`edge-train`), `invocation` (how the person ran it), `tensorflow_env`.
Importing this package imports nothing heavy; TensorFlow is imported only where a model is built or trained.
"""
