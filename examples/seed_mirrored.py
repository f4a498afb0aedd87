import numpy as np
import hpctrain as tf
from hpctrain.keras.models import Sequential
from hpctrain.keras.layers import Dense
from hpctrain.keras.optimizers import Adam

strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    model = Sequential()
    model.add(Dense(32, input_dim=784, activation='relu'))
    model.add(Dense(10, activation='softmax'))
    model.compile(optimizer=Adam(learning_rate=0.001), loss='categorical_crossentropy', metrics=['accuracy'])
    x_train = np.random.rand(1000, 784)
    y_train = np.random.randint(10, size=(1000, 1))
    model.fit(x_train, y_train, epochs=10, batch_size=32)
