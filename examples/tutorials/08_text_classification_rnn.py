"""API surface of the TensorFlow text-classification tutorials (basic text classification and
"Text classification with an RNN").

Synthetic "reviews": padded sequences of word ids (0 is padding), some words carrying a positive
or a negative sentiment; a review is positive when it has more positive than negative words.
Two models, as in the tutorials:
- Embedding -> Dropout -> GlobalAveragePooling1D -> Dropout -> Dense(1) on logits
  (BinaryCrossentropy(from_logits=True), BinaryAccuracy(threshold=0.0));
- Embedding(mask_zero=True) -> Bidirectional(LSTM) -> Dense(relu) -> Dense(1), where the mask
  from the embedding makes both directions of the LSTM skip the padding; the model is checked to
  give the same prediction with and without extra padding.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(8)

vocab_size, max_len, n = 400, 20, 2200
rng = np.random.default_rng(8)
word_sentiment = np.zeros(vocab_size)
word_sentiment[2:22] = 1.0    # positive words
word_sentiment[22:42] = -1.0  # negative words
reviews, labels = [], []
while len(reviews) < n:
    length = rng.integers(6, max_len + 1)
    words = rng.integers(2, vocab_size, length)
    score = word_sentiment[words].sum()
    if score == 0:
        continue
    reviews.append(np.pad(words, (0, max_len - length)))
    labels.append(float(score > 0))
x = np.array(reviews, dtype="int64")
y = np.array(labels, dtype="float32")
x_train, y_train, x_test, y_test = x[:1600], y[:1600], x[1600:], y[1600:]
print(f"{len(x)} reviews, {y.mean():.0%} positive, longest {max_len} words")

# The basic text-classification model: an average of word embeddings.
pooled = keras.Sequential([
    keras.Input(shape=(None,), dtype="int64"),
    layers.Embedding(vocab_size, 16),
    layers.Dropout(0.2),
    layers.GlobalAveragePooling1D(),
    layers.Dropout(0.2),
    layers.Dense(1),
])
pooled.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True), optimizer=keras.optimizers.Adam(3e-3),
               metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])
pooled.fit(x_train, y_train, validation_split=0.1, epochs=8, batch_size=64, verbose=0)
_, pooled_accuracy = pooled.evaluate(x_test, y_test, verbose=0)
print(f"Embedding + GlobalAveragePooling1D: test accuracy {pooled_accuracy:.4f}")

# The RNN model: a masked embedding feeding a bidirectional LSTM.
rnn = keras.Sequential([
    keras.Input(shape=(None,), dtype="int64"),
    layers.Embedding(vocab_size, 16, mask_zero=True),
    layers.Bidirectional(layers.LSTM(16)),
    layers.Dense(16, activation="relu"),
    layers.Dense(1),
])
rnn.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True), optimizer=keras.optimizers.Adam(5e-3),
            metrics=["accuracy"])
rnn.summary()
history = rnn.fit(x_train, y_train, validation_data=(x_test[:200], y_test[:200]), epochs=3, batch_size=64, verbose=2)
test_loss, test_accuracy = rnn.evaluate(x_test, y_test, verbose=0)
print(f"Embedding + Bidirectional(LSTM): test loss {test_loss:.4f}, accuracy {test_accuracy:.4f}")

# The mask makes padding irrelevant: the same reviews padded to 20 and to 36 words.
sample = x_test[:4]
longer = np.pad(sample, ((0, 0), (0, 16)))
a = rnn.predict(sample, verbose=0)
b = rnn.predict(longer, verbose=0)
print("padding changes the logits by at most", float(np.abs(a - b).max()))
assert np.allclose(a, b, atol=1e-4)

print("RESULT " + json.dumps({"metric": "rnn_test_accuracy", "value": float(test_accuracy), "kind": "accuracy"}))
