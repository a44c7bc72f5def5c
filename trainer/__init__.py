"""trainer: build and train a network of the registry on CIFAR-10, an image-folder tree or the CIFAR archive.

Modules: `models` (the networks, one module per family, and the table of their defaults), `model`
(the documented CNN under its old name), `data` (loading data sets into uint8 arrays), `batches`
(streamed batches and augmentation), `train` (the training loop, checkpoints, resume and outputs),
`plots` (accuracy curves), `cli` (`edge-train`). Importing this package imports nothing heavy;
TensorFlow is imported only where a model is built or trained.
"""
