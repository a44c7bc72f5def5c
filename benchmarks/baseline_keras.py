"""Baseline: load the Keras model with TensorFlow and predict one image (what edge-classify avoids)."""
import sys
import numpy as np
from PIL import Image
import tensorflow as tf
model = tf.keras.models.load_model(sys.argv[1])
height, width = model.input_shape[1:3]
pixels = np.asarray(Image.open(sys.argv[2]).convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
print(int(np.argmax(model.predict(pixels[None], verbose=0))))
