"""The user's own teacher: a small Keras CNN trained on the folder, ending in softmax."""

import sys

import keras

folder, out = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
ds = keras.utils.image_dataset_from_directory(folder, image_size=(24, 24), batch_size=32, seed=0)
model = keras.Sequential(
    [
        keras.Input((24, 24, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, activation="softmax"),
    ]
)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(ds, epochs=15, verbose=2)
model.save(out)
print("saved", out, "params", model.count_params())
