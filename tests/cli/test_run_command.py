"""``hpctrain run script.py``: unchanged TensorFlow/Keras scripts, run on hpctrain in a child process."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from conftest import REPO
from hpctrain import cli

TUTORIAL_SCRIPT = """
import sys

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers
import tensorflow.keras
import keras as plain_keras
from tensorflow.math import reduce_mean

x = np.linspace(-1, 1, 64, dtype="float32").reshape(32, 2)
y = (x[:, 0] > 0).astype("float32")
train = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).prefetch(tf.data.AUTOTUNE)
model = keras.Sequential([keras.Input((2,)), layers.Dense(1, activation="sigmoid", kernel_initializer="zeros")])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=float(sys.argv[2])), loss="binary_crossentropy",
              metrics=["accuracy"])
model.fit(train, epochs=1, shuffle=False, verbose=0)
model.save(sys.argv[1])
restored = plain_keras.models.load_model(sys.argv[1])
loss, accuracy = restored.evaluate(x, y, verbose=0)
print(f"loss={loss:.7f} accuracy={accuracy:.4f}")
print("modules", tf.__name__, keras.__name__, tensorflow.keras.layers is layers is plain_keras.layers,
      plain_keras.config.backend(), reduce_mean is tf.math.reduce_mean)
"""

PROBE_SCRIPT = """
import tensorflow as tf
import keras
from keras.src.utils import backend_utils, module_utils

print("keras sees tensorflow:", module_utils.tensorflow.available, backend_utils.in_tf_graph())
try:
    keras.layers.StringLookup(vocabulary=["a", "b"])
except ImportError as error:
    print("StringLookup:", error)
try:
    module_utils.tensorflow.data
except ImportError as error:
    print("handle:", error)
for name in ("tensorflow.python.framework", "tensorflow.io.gfile", "tensorflow.summary", "tensorflow.engine"):
    try:
        __import__(name)
    except ModuleNotFoundError as error:
        print("missing:", error.name)
keras.utils.set_random_seed(4)
first = float(tf.random.normal([1])[0])
tf.random.set_seed(4)
print("seeded:", first == float(tf.random.normal([1])[0]))

import os
from torch.utils.tensorboard import SummaryWriter  # TensorBoard's writer uses its stub, not the alias

writer = SummaryWriter("logs")
writer.add_scalar("loss", 0.5, 1)
writer.close()
print("event files:", len([f for f in os.listdir("logs") if f.startswith("events.out.tfevents")]))
"""


def run_command(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("KERAS_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "hpctrain.cli", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def expected_loss_after_one_step(learning_rate):
    """One full-batch SGD step of a zero-initialised logistic unit, then its binary cross-entropy."""
    x = np.linspace(-1, 1, 64).reshape(32, 2)
    y = (x[:, 0] > 0).astype(float)
    error = 0.5 - y  # sigmoid(0) - y: the loss's gradient per logit, times the batch size
    w = -learning_rate * x.T @ error / 32
    b = -learning_rate * error.mean()
    p = np.clip(1 / (1 + np.exp(-(x @ w + b))), 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    accuracy = np.mean((p > 0.5) == (y > 0.5))
    return loss, accuracy


def test_tutorial_script_trains_saves_and_loads(tmp_path):
    (tmp_path / "tutorial.py").write_text(TUTORIAL_SCRIPT)
    result = run_command("tutorial.py", str(tmp_path / "model.keras"), "0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    metrics = dict(part.split("=") for part in lines[-2].split())
    loss, accuracy = expected_loss_after_one_step(0.5)
    assert abs(float(metrics["loss"]) - loss) < 1e-6
    assert float(metrics["accuracy"]) == accuracy == 1.0
    assert abs(loss - 0.6314135) < 1e-6
    assert lines[-1] == "modules hpctrain hpctrain.keras True torch True"
    assert (tmp_path / "model.keras").is_file()


def test_keras_and_tensorboard_still_see_tensorflow_as_absent(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE_SCRIPT)
    result = run_command("probe.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "keras sees tensorflow: False False",
        "StringLookup: Layer StringLookup requires TensorFlow. Install it via `pip install tensorflow`.",
        "handle: This requires the tensorflow module. You can install it via `pip install tensorflow`",
        "missing: tensorflow.python",
        "missing: tensorflow.io",
        "missing: tensorflow.summary",
        "missing: tensorflow.engine",
        "seeded: True",
        "event files: 1",
    ]


def test_arguments_main_name_sibling_imports_and_exit_status(tmp_path):
    (tmp_path / "helper.py").write_text("from tensorflow.keras.layers import Dense\nUNITS = Dense(3).units\n")
    (tmp_path / "main.py").write_text(textwrap.dedent("""
        import sys
        import helper
        print(__name__, sys.argv[0], sys.argv[1:], helper.UNITS)
        sys.exit(int(sys.argv[-1]))
    """))
    result = run_command("main.py", "--epochs", "2", "3", cwd=tmp_path)
    assert result.returncode == 3
    assert result.stdout.splitlines() == ["__main__ main.py ['--epochs', '2', '3'] 3"]


def test_missing_script_is_exit_status_2(tmp_path, capsys):
    missing = str(tmp_path / "absent.py")
    assert cli.main(["run", missing]) == 2
    assert capsys.readouterr().err == (f"hpctrain run: {missing}: no such script (give the path of the "
                                       "Python file to run)\n")
    assert cli.main(["run"]) == 2
    assert capsys.readouterr().err == "hpctrain run: give the script to run: hpctrain run SCRIPT [ARGS ...]\n"
    result = run_command("absent.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("hpctrain run: absent.py: no such script (give the path of "
                                                      "the Python file to run)")
    assert "tensorflow" not in sys.modules
