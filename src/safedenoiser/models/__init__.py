"""The bundled Fashion-MNIST models: data, definitions, training, loading.

    from safedenoiser.models import load_pipeline, load_classifier
    pipe = load_pipeline("fashion-text")      # a diffusers StableDiffusionPipeline
    pipe = load_pipeline("fashion-class")     # a FashionClassPipeline (labels, None = unconditional)
"""
