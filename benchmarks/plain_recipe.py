"""The documented recipe as a plain script: the baseline that bench_train.py times edge-train against.

Usage: python benchmarks/plain_recipe.py DATA [EPOCHS] [SEED]   (DATA holds train/<class>/ and test/<class>/)
Prints one JSON line: test accuracy, training seconds (model.fit only), loading seconds.
Pixels are float32 x / 255, as edge-train feeds them, so the two runs do the same arithmetic.
"""
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers
from PIL import Image


def load(folder):
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(index)
    return np.stack(images), keras.utils.to_categorical(labels, len(classes)).astype("float32")


def main():
    data, epochs = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    x_train, y_train = load(data / "train")
    x_test, y_test = load(data / "test")
    loading = time.perf_counter() - start
    order = np.random.default_rng(seed).permutation(len(x_train))  # the files are sorted by class
    x_train, y_train = x_train[order].astype("float32") / 255.0, y_train[order]
    x_test = x_test.astype("float32") / 255.0
    model = keras.Sequential([
        keras.Input(shape=(32, 32, 3)),
        layers.Conv2D(32, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(y_train.shape[1], activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, validation_split=0.2, verbose=2)
    training = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(json.dumps({"test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
                      "training_seconds": training, "loading_seconds": loading, "epochs": epochs,
                      "parameters": model.count_params(), "train_images": len(x_train)}))


if __name__ == "__main__":
    main()
