"""API surface of the imbalanced-data tutorials (TensorFlow "Classification on imbalanced data",
keras.io "Imbalanced classification: credit card fraud detection").

Synthetic transactions, about 4% of them fraudulent (frauds differ from the rest by a shift in a
few of the 20 features, so the classes overlap). Features standardized with training statistics.
As in the tutorials: the output layer's bias initialized to log(pos/neg) with
keras.initializers.Constant, a long list of metrics (TruePositives, FalsePositives,
TrueNegatives, FalseNegatives, BinaryAccuracy, Precision, Recall, AUC and AUC(curve="PR")),
a baseline model, then the same model trained with class_weight, with validation_data, and the
confusion counts compared at threshold 0.5.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(10)

rng = np.random.default_rng(10)
n, features = 3000, 20
labels = (rng.random(n) < 0.04).astype("float32")
x = rng.normal(size=(n, features))
x[labels == 1, :5] += rng.normal(1.3, 0.5, size=(int(labels.sum()), 5))
x = x.astype("float32")
labels = labels[:, None]  # (n, 1) like the model's output: the BinaryCrossentropy metric needs it on torch
x_train, y_train = x[:2000], labels[:2000]
x_val, y_val = x[2000:2400], labels[2000:2400]
x_test, y_test = x[2400:], labels[2400:]
mean, std = x_train.mean(axis=0), x_train.std(axis=0)
x_train, x_val, x_test = [(part - mean) / std for part in (x_train, x_val, x_test)]

neg, pos = np.bincount(y_train.ravel().astype(int))
print(f"training examples: {neg + pos}, positives: {pos} ({pos / (neg + pos):.2%})")

METRICS = [
    keras.metrics.BinaryCrossentropy(name="cross_entropy"),
    keras.metrics.TruePositives(name="tp"),
    keras.metrics.FalsePositives(name="fp"),
    keras.metrics.TrueNegatives(name="tn"),
    keras.metrics.FalseNegatives(name="fn"),
    keras.metrics.BinaryAccuracy(name="accuracy"),
    keras.metrics.Precision(name="precision"),
    keras.metrics.Recall(name="recall"),
    keras.metrics.AUC(name="auc"),
    keras.metrics.AUC(name="prc", curve="PR"),
]


def make_model(output_bias=None):
    if output_bias is not None:
        output_bias = keras.initializers.Constant(output_bias)
    model = keras.Sequential([
        keras.Input(shape=(features,)),
        layers.Dense(16, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(1, activation="sigmoid", bias_initializer=output_bias),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3), loss=keras.losses.BinaryCrossentropy(),
                  metrics=METRICS)
    return model


initial_bias = np.log([pos / neg])
baseline = make_model(output_bias=initial_bias)
print("initial loss with the bias set:", round(baseline.evaluate(x_train, y_train, batch_size=256, verbose=0)[0], 4),
      "(log 2 would be", round(float(np.log(2)), 4), "without it)")
baseline.fit(x_train, y_train, batch_size=128, epochs=10, validation_data=(x_val, y_val), verbose=0)
base = baseline.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)

# Class weights: each class contributes half of the total weight.
total = neg + pos
class_weight = {0: (1 / neg) * (total / 2.0), 1: (1 / pos) * (total / 2.0)}
print(f"class weights: 0 -> {class_weight[0]:.2f}, 1 -> {class_weight[1]:.2f}")
weighted = make_model(output_bias=initial_bias)
weighted.fit(x_train, y_train, batch_size=128, epochs=10, validation_data=(x_val, y_val),
             class_weight=class_weight, verbose=0)
result = weighted.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)

for name, scores in (("baseline", base), ("class-weighted", result)):
    print(f"{name:>15}: tp {scores['tp']:.0f} fp {scores['fp']:.0f} tn {scores['tn']:.0f} fn {scores['fn']:.0f}"
          f" precision {scores['precision']:.3f} recall {scores['recall']:.3f} auc {scores['auc']:.4f}"
          f" prc {scores['prc']:.4f}")
assert result["tp"] + result["fn"] == y_test.sum()

print("RESULT " + json.dumps({"metric": "class_weighted_test_auc", "value": float(result["auc"]), "kind": "accuracy"}))
