"""trainer: build and train the documented CIFAR-10 CNN on CIFAR-10, an image-folder tree or the CIFAR archive.

Modules: `model` (the network), `data` (loading data sets into arrays), `train` (the training loop,
checkpoints, resume and outputs), `plots` (accuracy curves), `cli` (`edge-train`). Importing this
package imports nothing heavy; TensorFlow is imported only where a model is built or trained.
"""
