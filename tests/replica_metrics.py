"""A custom metric for the spawned-replica tests (importable by replicas)."""

from hpctrain.keras import metrics


class CorrectFraction(metrics.Metric):
    """Accuracy as a ratio of two summed variables: right only if replicas sum the state, not the results."""

    def __init__(self, name="correct_fraction"):
        super().__init__(name=name)
        self.correct = self.add_weight(name="correct")
        self.seen = self.add_weight(name="seen")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.correct.assign_add((y_pred.argmax(-1) == y_true).sum())
        self.seen.assign_add(y_true.shape[0])

    def result(self):
        return self.correct / self.seen
