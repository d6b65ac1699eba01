"""Model side: backbones (registry), heads, losses, metrics, build.

Importing the package registers the custom layers and losses with Keras, so
`import model; keras.models.load_model("model_save/x.h5")` works (.h5 and .keras).
"""
from model import layers, losses, metrics  # noqa: F401  (registration side effects)
