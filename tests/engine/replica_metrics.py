"""A custom metric for the spawned-replica tests (importable by replicas)."""

from hpctrain.keras import metrics, ops


class CorrectFraction(metrics.Metric):
    """Accuracy as a ratio of two summed variables: right only if replicas sum the state, not the results."""

    def __init__(self, name="correct_fraction", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_weight(name="correct", initializer="zeros")
        self.seen = self.add_weight(name="seen", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        right = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels)
        self.correct.assign_add(ops.sum(ops.cast(right, "float32")))
        self.seen.assign_add(ops.cast(ops.shape(labels)[0], "float32"))

    def result(self):
        return self.correct / self.seen
