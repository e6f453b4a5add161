"""The model's own features (`UNetFeatures`) and the local estimator measuring closeness in them."""

from types import SimpleNamespace

import pytest
import torch

from conftest import mixture_pipeline, tiny_class_pipe, tiny_unet_cond
from safedenoiser import NegationSet, SafeDenoiser, SafeDenoiserError
from safedenoiser.core.local import LocalPosterior
from safedenoiser.integrations.unet_features import UNetFeatures


def _latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _first_up_block_by_hand(unet, x: torch.Tensor, **conditioning) -> torch.Tensor:
    """The whole UNet run, the first up block's output caught on the way."""
    caught = []
    handle = unet.up_blocks[0].register_forward_hook(lambda m, a, out: caught.append(out))
    with torch.no_grad():
        unet(x, torch.zeros(len(x), dtype=torch.long), **conditioning)
    handle.remove()
    return caught[0].flatten(1)


def test_text_unet_features_are_its_first_up_block_at_the_empty_prompt(sd_pipe):
    x = _latents(5)
    empty = sd_pipe.encode_prompt("", "cpu", 1, False)[0]
    expected = _first_up_block_by_hand(sd_pipe.unet, x, encoder_hidden_states=empty.expand(5, -1, -1))
    later = []
    sd_pipe.unet.up_blocks[1].register_forward_hook(lambda *a: later.append(1))
    features = UNetFeatures(sd_pipe, batch_size=2)(x)  # three batches
    torch.testing.assert_close(features, expected)
    assert features.shape == (5, 16 * 8 * 8) and features.dtype == torch.float32
    assert later == []  # the rest of the UNet did not run
    assert not sd_pipe.unet.up_blocks[0]._forward_hooks  # its own hook is gone


def test_class_unet_features_use_the_null_class():
    pipe = tiny_class_pipe()
    x = _latents(3)
    expected = _first_up_block_by_hand(pipe.unet, x, class_labels=torch.full((3,), 10))
    torch.testing.assert_close(UNetFeatures(pipe)(x), expected)
    other = _first_up_block_by_hand(pipe.unet, x, class_labels=torch.full((3,), 2))
    assert not torch.allclose(expected, other)  # the label matters: the null one was used


def test_large_feature_maps_are_pooled(sd_pipe, monkeypatch):
    monkeypatch.setattr(UNetFeatures, "MAX_SIDE", 2)
    x = _latents(2)
    full = UNetFeatures(sd_pipe)._first_up_block(x)  # 16 channels x 8 x 8
    pooled = UNetFeatures(sd_pipe)(x)
    assert pooled.shape == (2, 16 * 2 * 2)
    torch.testing.assert_close(pooled, full.reshape(2, 16, 2, 4, 2, 4).mean((3, 5)).flatten(1))


def test_models_without_supported_unet_features():
    mixture = mixture_pipeline("DDIMPipeline")  # its "unet" is a closed-form predictor: no up blocks
    unet = tiny_unet_cond()
    unet.register_to_config(addition_embed_type="text_time")  # SDXL-like: needs added conditions
    sdxl_like = SimpleNamespace(unet=unet, encode_prompt=lambda *a: None)
    unet = tiny_unet_cond()
    unet.encoder_hid_proj = torch.nn.Identity()  # what load_ip_adapter sets, with the config below
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")  # the UNet then needs image embeddings
    ip_adapter = SimpleNamespace(unet=unet, encode_prompt=lambda *a: None)
    for pipe in (mixture, sdxl_like, ip_adapter, SimpleNamespace(transformer=object())):
        assert UNetFeatures.of(pipe) is None
        with pytest.raises(SafeDenoiserError, match="features='latent'"):
            UNetFeatures(pipe)


@pytest.fixture(scope="module")
def confusable():
    """Latents whose classes differ only in one coordinate, drowned by the spread of the 63 others."""
    gen = torch.Generator().manual_seed(0)

    def cluster(n: int, sign: float) -> torch.Tensor:
        x = 3 * torch.randn(n, 64, generator=gen, dtype=torch.float64)
        x[:, 0] = sign + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
        return x

    return NegationSet.from_latents(cluster(150, 1.0)), torch.cat([cluster(60, 1.0), cluster(240, -1.0)]), cluster


def _first_coordinate(x: torch.Tensor) -> torch.Tensor:
    """A feature that sees only the coordinate the `confusable` classes differ in."""
    return 10 * x.reshape(len(x), -1)[:, :1].double()


def test_features_decide_closeness_while_the_means_stay_latents(confusable):
    negation, reference, cluster = confusable
    d = torch.cat([cluster(20, 1.0), cluster(20, -1.0)])
    latent = LocalPosterior(negation, reference)
    coordinate = latent.with_features(_first_coordinate)
    beta_latent = latent(d)[0]
    beta, d_unsafe, d_safe = coordinate(d)
    assert (beta[:20] > 0.5).all() and (beta[20:] < 0.5).all()  # the feature tells them apart
    assert beta[:20].mean() > 0.95 and beta[20:].mean() < 0.05
    assert (beta_latent[:20] - beta_latent[20:]).abs().mean() < 0.5  # the latents hardly do
    assert d_unsafe.shape == d_safe.shape == (40, 64)
    assert (d_unsafe[:20, 0] > 0.8).all() and (d_safe[20:, 0] < -0.8).all()  # means of the nearby latents


def test_with_features_a_reference_image_is_negated_where_either_space_says_so(confusable):
    negation, reference, _ = confusable
    latent = LocalPosterior(negation, reference)
    featured = latent.with_features(_first_coordinate)
    in_features = featured.reference_ratios(_first_coordinate(reference), _first_coordinate(negation.latents))
    in_features = in_features[0] >= 1
    # the feature alone mistakes no safe image but leaves some of the concept's (of 60) on the safe side
    assert not in_features[60:].any() and 40 < int(in_features[:60].sum()) < 60
    assert torch.equal(featured.negated_reference, in_features | latent.negated_reference)
    assert int(featured.negated_reference[:60].sum()) > int(in_features[:60].sum())  # the latents catch some
    assert featured.prior == pytest.approx(float(featured.negated_reference.double().mean()))


def test_identity_features_equal_latent_distances(confusable):
    negation, reference, cluster = confusable
    d = cluster(10, 1.0)
    latent = LocalPosterior(negation, reference)
    for a, b in zip(latent.with_features(lambda x: x.flatten(1))(d), latent(d)):
        torch.testing.assert_close(a, b)


def _sets():
    negation = NegationSet.from_latents(_latents(20, seed=1) + 2.0)
    return negation, torch.cat([_latents(10, seed=2) + 2.0, _latents(30, seed=3)])


def test_guided_sampling_never_computes_the_features(sd_pipe):
    negation, reference = _sets()
    safe = SafeDenoiser(negation, reference=reference)
    with safe.attach(sd_pipe):
        sd_pipe("a", num_inference_steps=2, guidance_scale=5.0)
    assert safe._in_features is None and not any(record.in_features for record in safe.trace)


def test_attach_binds_the_unet_features_once(sd_pipe):
    negation, reference = _sets()
    safe = SafeDenoiser(negation, reference=reference)
    with safe.attach(sd_pipe):
        sd_pipe("a", num_inference_steps=2, guidance_scale=1.0)  # unguided: the features serve
    bound = safe._in_features
    assert isinstance(bound.features, UNetFeatures) and bound.features.unet is sd_pipe.unet
    assert bound.keys.shape[1] == 16 * 8 * 8 and safe.beta.features is None  # the latent one is kept
    assert all(record.in_features for record in safe.trace)
    with safe.attach(sd_pipe):
        pass
    assert safe._in_features is bound  # the same UNet: nothing recomputed
    safe.bind(mixture_pipeline("DDIMPipeline"))  # a model without UNet features
    assert safe._unet_features is None and safe._in_features is None


def test_auto_features_serve_unguided_sampling_only(sd_pipe):
    negation, reference = _sets()
    x0 = _latents(3, seed=4)
    runs = {}
    for features in ("auto", "unet", "latent"):
        safe = SafeDenoiser(negation, reference=reference, features=features, latch=False)
        safe.bind(sd_pipe)
        runs[features] = [safe.correct(x0, 0.5, 0.8, x0, guided=g) for g in (False, True)]
        assert [record.in_features for record in safe.trace] == {"auto": [True, False], "unet": [True, True],
                                                                 "latent": [False, False]}[features]
    for guided in (0, 1):  # the same space gives the same correction
        torch.testing.assert_close(runs["auto"][guided].beta, runs["unet" if guided == 0 else "latent"][guided].beta)
    assert not torch.allclose(runs["unet"][1].beta, runs["latent"][1].beta)


def test_an_estimator_with_its_own_features_keeps_them(sd_pipe, confusable):
    negation, reference = _sets()
    own = LocalPosterior(negation, reference, features=lambda x: x[:, :1].flatten(1))
    safe = SafeDenoiser(negation, beta=own)
    safe.bind(sd_pipe)
    assert safe._in_features is None and safe.beta is own


def test_features_settings_are_checked(sd_pipe, confusable):
    negation, reference, _ = confusable
    with pytest.raises(SafeDenoiserError, match="features must be"):
        LocalPosterior(negation, reference, features="unet")
    with pytest.raises(SafeDenoiserError, match="features must be 'auto', 'unet' or 'latent'"):
        SafeDenoiser(negation, reference=reference, features="pixels")
    negation, reference = _sets()
    safe = SafeDenoiser(negation, reference=reference, features="unet")
    with pytest.raises(SafeDenoiserError, match="no UNet features"):
        safe.bind(mixture_pipeline("DDIMPipeline"))
