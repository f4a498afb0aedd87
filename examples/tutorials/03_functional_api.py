"""API surface of the Keras guide "The Functional API" (its multi-input, multi-output example).

A ticket-routing model as in the guide: three named inputs (title tokens, body tokens, binary tag
vector), two named outputs (a priority score and one of four departments). Shown here:
keras.Input with names, one Embedding layer shared between the title and the body, LSTM and
GlobalAveragePooling1D branches, layers.concatenate, named output layers, compile with loss,
loss_weights and metrics dicts keyed by output name, fit/evaluate on dicts of arrays, the
per-output metric names in the logs (``department_accuracy``), model.get_layer, and reusing the
trained layers inside a second functional model.

The tickets are synthetic with a hidden rule: the department follows from the tags and a few
"keyword" tokens in the title; the priority from urgent tokens in the body.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(3)

num_tags, num_words, num_departments = 12, 200, 4
title_len, body_len = 6, 12
rng = np.random.default_rng(3)
n = 2500

department = rng.integers(0, num_departments, n)
tags = (rng.random((n, num_tags)) < 0.15).astype("float32")
tags[np.arange(n), department * 3] = 1.0  # each department has a tag of its own...
noisy = rng.random(n) < 0.3
tags[noisy, rng.integers(0, num_tags, noisy.sum())] = 1.0  # ...with noise tags on top
title = rng.integers(10, num_words, (n, title_len))
title[:, 0] = 1 + department  # a keyword token for the department
hide = rng.random(n) < 0.4  # but in 40% of titles the keyword is missing
title[hide, 0] = rng.integers(10, num_words, hide.sum())
body = rng.integers(10, num_words, (n, body_len))
urgent = rng.random(n) < 0.3
body[urgent, rng.integers(0, body_len, urgent.sum())] = 5  # token 5 means "urgent"
priority = urgent.astype("float32")

split = 2000
def part(a, train):
    return a[:split] if train else a[split:]

# Three named inputs.
title_input = keras.Input(shape=(None,), name="title")
body_input = keras.Input(shape=(None,), name="body")
tags_input = keras.Input(shape=(num_tags,), name="tags")

shared_embedding = layers.Embedding(num_words, 16, name="shared_embedding")
title_features = layers.LSTM(16, name="title_lstm")(shared_embedding(title_input))
body_features = layers.GlobalAveragePooling1D(name="body_pool")(
    layers.Dense(16, activation="relu", name="body_tokens")(shared_embedding(body_input)))

x = layers.concatenate([title_features, body_features, tags_input], name="merge")
x = layers.Dense(32, activation="relu", name="hidden")(x)
priority_pred = layers.Dense(1, name="priority")(x)
department_pred = layers.Dense(num_departments, name="department")(x)

model = keras.Model(inputs=[title_input, body_input, tags_input],
                    outputs={"priority": priority_pred, "department": department_pred},
                    name="ticket_router")
model.compile(
    optimizer=keras.optimizers.Adam(learning_rate=3e-3),
    loss={"priority": keras.losses.BinaryCrossentropy(from_logits=True),
          "department": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    loss_weights={"priority": 1.0, "department": 0.5},
    metrics={"priority": [keras.metrics.BinaryAccuracy(threshold=0.0, name="acc")],
             "department": ["accuracy"]},
)

inputs = {"title": title, "body": body, "tags": tags}
targets = {"priority": priority, "department": department}
history = model.fit({k: part(v, True) for k, v in inputs.items()},
                    {k: part(v, True) for k, v in targets.items()},
                    epochs=6, batch_size=64, verbose=2)
print("logged:", sorted(history.history))
scores = model.evaluate({k: part(v, False) for k, v in inputs.items()},
                        {k: part(v, False) for k, v in targets.items()},
                        verbose=0, return_dict=True)
print({k: round(float(v), 4) for k, v in scores.items()})

# A named layer reused in a new functional model: the trained shared embedding of a title.
embedding = model.get_layer("shared_embedding")
encoder = keras.Model(title_input, model.get_layer("title_lstm").output, name="title_encoder")
assert encoder.get_layer("shared_embedding") is embedding
print("encoded titles:", encoder.predict(title[:3], verbose=0).shape)

print("RESULT " + json.dumps({"metric": "department_accuracy", "value": float(scores["department_accuracy"]),
                              "kind": "accuracy"}))
