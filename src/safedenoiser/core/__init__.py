"""The math: parametrisations, kernels over a negation set, beta estimators, the safe denoiser."""
