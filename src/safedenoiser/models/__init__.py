"""The bundled Fashion-MNIST models: data, definitions, training, loading.

    from safedenoiser.models import load_pipeline, load_classifier
    pipe = load_pipeline("fashion-text")      # a diffusers StableDiffusionPipeline
    pipe = load_pipeline("fashion-class")     # a FashionClassPipeline (labels, None = unconditional)
"""

from safedenoiser.models.data import CLASS_NAMES, load_fashion_mnist
from safedenoiser.models.registry import (BUNDLED, load_classifier, load_pipeline,
                                          sampling_defaults)

__all__ = ["BUNDLED", "CLASS_NAMES", "load_classifier", "load_fashion_mnist", "load_pipeline",
           "sampling_defaults"]
