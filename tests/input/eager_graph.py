"""The one way the input tests run an op on one example (or batch) eagerly and inside tf.data."""
import tensorflow as tf


def eager_and_in_tf_data(fn, *tensors) -> list:
    """fn(*tensors) eagerly and as a tf.data map -> [eager, graph] outputs as numpy (nested as fn returns)."""
    tensors = tuple(tf.constant(t) for t in tensors)
    eager = fn(*tensors)
    graph = next(iter(tf.data.Dataset.from_tensors(tensors).map(fn)))
    return [tf.nest.map_structure(lambda t: t.numpy(), out) for out in (eager, graph)]
