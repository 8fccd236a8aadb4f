"""Differential-privacy mechanisms and accountants.

- :mod:`featherfl.privacy.accountant`: Rényi-DP accounting of the sampled
  Gaussian mechanism (Mironov 2017; Mironov, Talwar, Zhang 2019) via Opacus.
- :mod:`featherfl.privacy.dpsgd`: sample-level DP-SGD on a client (Abadi et
  al. 2016): Poisson-sampled batches, per-sample clipping, Gaussian noise.
- :mod:`featherfl.privacy.client_level`: client-level DP-FedAvg (McMahan et al.
  2018): clip each client update at the server, add Gaussian noise to the mean.

Noise only ever touches the tensors that are trained and sent.
"""
