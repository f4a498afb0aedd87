# examples/seed.py for Keras 3 on PyTorch, for bench_keras_front.py: a verbatim copy except
# the imports (keras on its torch backend instead of hpctrain) and the loss, which is
# 'sparse_categorical_crossentropy' because Keras rejects these integer labels with
# 'categorical_crossentropy'.
import os
os.environ.setdefault("KERAS_BACKEND", "torch")
import numpy as np
from keras.models import Sequential
from keras.layers import Dense
from keras.optimizers import Adam

model = Sequential()
model.add(Dense(32, input_dim=784, activation='relu'))
model.add(Dense(10, activation='softmax'))
model.compile(optimizer=Adam(learning_rate=0.001), loss='sparse_categorical_crossentropy', metrics=['accuracy'])
x_train = np.random.rand(1000, 784)
y_train = np.random.randint(10, size=(1000, 1))
model.fit(x_train, y_train, epochs=10, batch_size=32)
