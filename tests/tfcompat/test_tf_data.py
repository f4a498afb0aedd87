"""tf.data.Dataset: the pipeline's elements, its TensorFlow semantics, and Keras's fit on it."""

import numpy as np
import pytest
import torch

import hpctrain as tf

Dataset = tf.data.Dataset


def labels(dataset):
    return [int(np.asarray(element[1] if isinstance(element, tuple) else element))
            for element in dataset.as_numpy_iterator()]


def test_from_tensor_slices_of_arrays_tuples_and_dicts():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.arange(6)
    pairs = list(Dataset.from_tensor_slices((x, y)))
    assert len(pairs) == 6
    assert isinstance(pairs[0], tuple) and isinstance(pairs[0][0], torch.Tensor)
    assert pairs[3][0].numpy().tolist() == [6.0, 7.0] and int(pairs[3][1]) == 3
    features = list(Dataset.from_tensor_slices({"a": x, "b": y}).as_numpy_iterator())
    assert features[5]["a"].tolist() == [10.0, 11.0] and int(features[5]["b"]) == 5
    scalars = list(Dataset.from_tensor_slices([1.5, 2.5]).as_numpy_iterator())
    assert [float(s) for s in scalars] == [1.5, 2.5] and scalars[0].dtype == np.float32  # a list is one tensor
    assert [int(s) for s in Dataset.from_tensor_slices([1, 2]).as_numpy_iterator()][1] == 2
    assert next(iter(Dataset.from_tensor_slices([1, 2]))).dtype == torch.int32
    assert [int(v) for v in Dataset.range(2, 8, 3)] == [2, 5]
    with pytest.raises(ValueError) as error:
        Dataset.from_tensor_slices((np.zeros(3), np.zeros(4)))
    assert str(error.value) == "from_tensor_slices needs tensors with the same first dimension; got [3, 4]."


def test_batch_and_lengths():
    ds = Dataset.from_tensor_slices(np.arange(10))
    batches = [b.tolist() for b in ds.batch(4).as_numpy_iterator()]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in ds.batch(4, drop_remainder=True).as_numpy_iterator()] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert (len(ds), len(ds.batch(4)), len(ds.batch(4, drop_remainder=True)), len(ds.batch(5))) == (10, 3, 2, 2)
    assert [b.tolist() for b in ds.batch(4).unbatch().take(3).as_numpy_iterator()] == [0, 1, 2]


def test_take_skip_repeat_and_cardinality():
    ds = Dataset.from_tensor_slices(np.arange(5))
    assert [int(v) for v in ds.take(2)] == [0, 1]
    assert [int(v) for v in ds.skip(3)] == [3, 4]
    assert [int(v) for v in ds.repeat(2)] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert [int(v) for v in ds.repeat().take(7)] == [0, 1, 2, 3, 4, 0, 1]
    assert (len(ds.take(2)), len(ds.skip(3)), len(ds.skip(9)), len(ds.repeat(3)), len(ds.take(-1))) == (2, 2, 0, 15, 5)
    assert int(ds.repeat().cardinality()) == tf.data.INFINITE_CARDINALITY == -1
    assert int(ds.filter(lambda v: v > 1).cardinality()) == tf.data.UNKNOWN_CARDINALITY == -2
    assert int(tf.data.experimental.cardinality(ds.repeat().take(4))) == 4
    with pytest.raises(TypeError) as error:
        len(ds.repeat())
    assert str(error.value) == "The dataset is infinite."
    with pytest.raises(TypeError) as error:
        len(ds.filter(lambda v: v > 1))
    assert str(error.value) == "The dataset length is unknown."
    assert [int(v) for v in ds.filter(lambda v: v % 2 == 0)] == [0, 2, 4]


def test_map_passes_tuple_components_as_arguments():
    x = np.arange(6, dtype=np.uint8).reshape(3, 2)
    ds = Dataset.from_tensor_slices((x, np.array([0, 1, 2])))
    scaled = ds.map(lambda image, label: (tf.cast(image, tf.float32) / 2.0, label + 10), num_parallel_calls=tf.data.AUTOTUNE)
    first = next(scaled.as_numpy_iterator())
    assert first[0].dtype == np.float32 and first[0].tolist() == [0.0, 0.5]
    assert int(first[1]) == 10
    as_dict = ds.map(lambda image, label: {"image": image, "label": label})
    assert int(list(as_dict.as_numpy_iterator())[2]["label"]) == 2
    batched = ds.batch(2).map(lambda image, label: tf.reduce_sum(image, axis=1))
    assert [b.tolist() for b in batched.as_numpy_iterator()] == [[1, 5], [9]]
    assert len(ds.map(lambda a, b: a)) == 3


def test_shuffle_full_buffer_is_a_seeded_permutation_reshuffled_each_pass():
    ds = Dataset.from_tensor_slices(np.arange(20)).shuffle(20, seed=5)
    first, second = labels_of(ds), labels_of(ds)
    assert sorted(first) == list(range(20)) and sorted(second) == list(range(20))
    assert first != second  # a new order every pass
    again = Dataset.from_tensor_slices(np.arange(20)).shuffle(20, seed=5)
    assert labels_of(again) == first and labels_of(again) == second  # same seed, same sequence of orders
    fixed = Dataset.from_tensor_slices(np.arange(20)).shuffle(20, seed=5, reshuffle_each_iteration=False)
    assert labels_of(fixed) == labels_of(fixed) != list(range(20))


def labels_of(ds):
    return [int(v) for v in ds.as_numpy_iterator()]


def test_shuffle_buffer_bounds_how_far_elements_move():
    assert labels_of(Dataset.from_tensor_slices(np.arange(10)).shuffle(1, seed=0)) == list(range(10))
    order = labels_of(Dataset.from_tensor_slices(np.arange(100)).shuffle(3, seed=0))
    assert sorted(order) == list(range(100))
    # With 3 slots the k-th element out can only be one of the first k+3 elements in.
    assert all(value < position + 3 for position, value in enumerate(order))


def test_shuffle_without_seed_follows_tf_random_set_seed():
    tf.random.set_seed(11)
    first = labels_of(Dataset.from_tensor_slices(np.arange(30)).shuffle(30))
    tf.random.set_seed(11)
    second = labels_of(Dataset.from_tensor_slices(np.arange(30)).shuffle(30))
    assert first == second != list(range(30))


def test_cache_freezes_the_first_pass():
    calls = []

    def record(v):
        calls.append(int(v))
        return v

    ds = Dataset.from_tensor_slices(np.arange(8)).shuffle(8, seed=1).map(record).cache()
    first, second = labels_of(ds), labels_of(ds)
    assert first == second and sorted(first) == list(range(8))
    assert len(calls) == 8  # the map ran on the first pass only
    assert labels_of(ds.prefetch(tf.data.AUTOTUNE)) == first


def test_pydataset_protocol_and_epochs():
    import keras

    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    y = np.arange(5)
    ds = Dataset.from_tensor_slices((x, y)).shuffle(5, seed=2).batch(2)
    assert isinstance(ds, keras.utils.PyDataset)
    assert ds.num_batches == len(ds) == 3
    epoch_one = [ds[i][1].tolist() for i in (2, 0, 1)]
    assert [ds[i][1].tolist() for i in (2, 0, 1)] == epoch_one  # the same pass until the epoch ends
    assert sorted(sum(epoch_one, [])) == [0, 1, 2, 3, 4]
    ds.on_epoch_end()
    epoch_two = [ds[i][1].tolist() for i in (2, 0, 1)]
    assert sorted(sum(epoch_two, [])) == [0, 1, 2, 3, 4] and epoch_two != epoch_one
    with pytest.raises(IndexError):
        ds[3]
    assert Dataset.from_tensor_slices(np.arange(5)).filter(lambda v: v > 1).batch(2).num_batches == 2
    assert Dataset.from_tensor_slices(np.arange(5)).repeat().num_batches is None


def test_as_arrays_gives_one_unshuffled_pass():
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    y = np.arange(7)
    w = np.linspace(0.5, 2.0, 7).astype(np.float32)
    data_x, data_y, data_w = Dataset.from_tensor_slices((x, y, w)).shuffle(7, seed=4).batch(3).as_arrays()
    np.testing.assert_array_equal(data_x, x)
    np.testing.assert_array_equal(data_y, y)
    np.testing.assert_array_equal(data_w, w)
    pair = Dataset.from_tensor_slices((x, y)).map(lambda a, b: (a * 2, b)).as_arrays()
    np.testing.assert_array_equal(pair[0], x * 2)
    assert pair[2] is None
    only_x = Dataset.from_tensor_slices(x).batch(4).as_arrays()
    np.testing.assert_array_equal(only_x[0], x)
    assert only_x[1:] == (None, None)
    features = Dataset.from_tensor_slices(({"a": x}, y)).as_arrays()
    np.testing.assert_array_equal(features[0]["a"], x)
    with pytest.raises(ValueError) as error:
        Dataset.from_tensor_slices(x).repeat().as_arrays()
    assert str(error.value) == "as_arrays needs a finite dataset; this one repeats forever (use take or repeat(n))."


def _model(keras):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_keras_fit_evaluate_predict_on_a_batched_dataset_match_arrays():
    keras = tf.keras
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    on_dataset, on_arrays = _model(keras), _model(keras)
    ds = Dataset.from_tensor_slices((x, y)).batch(16)
    history = on_dataset.fit(ds, epochs=3, shuffle=False, verbose=0)
    reference = on_arrays.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], reference.history["loss"], rtol=1e-6)
    for a, b in zip(on_dataset.get_weights(), on_arrays.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(on_dataset.evaluate(ds, verbose=0), on_arrays.evaluate(x, y, verbose=0), rtol=1e-6)
    predicted = on_dataset.predict(Dataset.from_tensor_slices(x).batch(16), verbose=0)
    np.testing.assert_allclose(predicted, on_arrays.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert predicted.shape == (50, 3)


def test_keras_fit_on_a_shuffled_repeated_dataset_reaches_every_sample():
    keras = tf.keras
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    y = np.arange(40) % 4 % 3
    model = _model(keras)
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    train = Dataset.from_tensor_slices((x, y)).shuffle(40, seed=0).batch(8).repeat()
    val = Dataset.from_tensor_slices((x, y)).batch(8).prefetch(tf.data.AUTOTUNE)
    history = model.fit(train, epochs=20, steps_per_epoch=5, validation_data=val, verbose=0)
    assert len(history.history["loss"]) == 20
    assert history.history["val_accuracy"][-1] == 1.0


def test_from_generator_and_zip():
    def pairs(limit):
        for i in range(limit):
            yield [i, i * 0.5]

    generated = Dataset.from_generator(pairs, output_types=(tf.int64, tf.float32), args=(3,))
    elements = list(generated.as_numpy_iterator())
    assert [(int(a), float(b)) for a, b in elements] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert (elements[0][0].dtype, elements[0][1].dtype) == (np.int64, np.float32)
    assert int(generated.cardinality()) == -2
    assert len(list(generated)) == 3  # the generator is called again on every pass
    zipped = Dataset.zip((Dataset.from_tensor_slices(np.arange(4)), Dataset.range(10, 13)))
    assert [(int(a), int(b)) for a, b in zipped] == [(0, 10), (1, 11), (2, 12)]
    assert len(zipped) == 3
    assert int(Dataset.zip(Dataset.range(2).repeat(), Dataset.range(2).repeat()).cardinality()) == -1
