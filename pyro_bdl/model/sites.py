"""Every site and plate name a pyro_bdl model uses: one definition, read by every method and adapter.

* weight sites are named by the parameter's module path (``"0.weight"``, ``"encoder.conv1.bias"``),
  optionally behind a [`LiftedNetwork`][pyro_bdl.LiftedNetwork] prefix;
* the likelihood observes `OBS_SITE` inside the plate `DATA_PLATE` (subsampled to a
  minibatch, scaled by N/B);
* a learned Gaussian / Student-t noise scale is the site `NOISE_SITE`.
"""
DATA_PLATE = "data"
OBS_SITE = "obs"
NOISE_SITE = "noise_scale"
