"""`safe-denoiser toy`: safe sampling of a Gaussian mixture, where every answer is known exactly."""
