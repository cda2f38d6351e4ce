"""The study's three Keras models, timed per epoch (run with tensorflow-cpu, in its own venv).

    .venv-keras/bin/python benchmarks/keras_peer.py cnn|rnn|bilstm STEPS EPOCHS

Builds each network exactly as the study describes it (README and docs/RESULTS.md restate it), compiles it with the
study's optimizer, fits STEPS batches of the study's batch size per epoch on Fashion-MNIST read from
data/FashionMNIST/raw, and prints {"epoch_seconds": [...]} as its last line.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from tensorflow import keras
from tensorflow.keras import layers

ROOT = Path(__file__).resolve().parents[1]


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def cnn():
    model = keras.Sequential([keras.Input((28, 28, 1))])
    for filters, dropout in ((32, 0.2), (64, 0.3), (128, 0.4)):
        for _ in range(2):
            model.add(layers.Conv2D(filters, 3, padding="same", activation="tanh"))
            model.add(layers.BatchNormalization())
        model.add(layers.MaxPooling2D(2))
        model.add(layers.Dropout(dropout))
    model.add(layers.Flatten())
    model.add(layers.Dense(16, activation="relu"))
    model.add(layers.BatchNormalization())
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(10, activation="softmax"))
    return model, keras.optimizers.RMSprop(learning_rate=1e-4), 100


def rnn():
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            layers.SimpleRNN(256, activation="relu", return_sequences=True),
            layers.SimpleRNN(128, activation="relu", return_sequences=True),
            layers.SimpleRNN(64, activation="relu"),
            layers.BatchNormalization(),
            layers.Dense(10, activation="softmax"),
        ]
    )
    return model, keras.optimizers.SGD(learning_rate=0.01), 65


def bilstm():
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            layers.Bidirectional(layers.LSTM(256, return_sequences=True)),
            layers.Bidirectional(layers.LSTM(128)),
            layers.Dense(256, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(10, activation="softmax"),
        ]
    )
    return model, keras.optimizers.Adam(learning_rate=1e-3), 64


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def main():
    name, steps, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model, optimizer, batch = {"cnn": cnn, "rnn": rnn, "bilstm": bilstm}[name]()
    raw = ROOT / "data" / "FashionMNIST" / "raw"
    x = read_idx(raw / "train-images-idx3-ubyte")[: steps * batch].astype("float32") / 255
    y = keras.utils.to_categorical(read_idx(raw / "train-labels-idx1-ubyte")[: steps * batch], 10)
    if name == "cnn":
        x = x[..., None]
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimes()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer])
    print(json.dumps({"epoch_seconds": timer.seconds}))


if __name__ == "__main__":
    main()
