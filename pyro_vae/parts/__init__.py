"""Parts of a VAE, each a plain ``nn.Module`` or distribution: networks, priors, likelihoods, posterior families,
and :mod:`.config` (what a part is, and how a saved config rebuilds one)."""
