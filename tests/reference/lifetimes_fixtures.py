"""Expected values for the CLV models' unit tests, computed once with Python's `lifetimes`.

Writes tests/fixtures/lifetimes_expected.json (committed), so the Rust tests need no Python:
  * BG/NBD per-customer log-likelihood, P(alive) and conditional expected purchases at fixed
    parameters, including heavy buyers and T = t_x;
  * scipy's hyp2f1 at the parameters the expectation uses;
  * Gamma-Gamma per-customer log-likelihood and conditional expected order value;
  * BG/NBD and Gamma-Gamma fits on the CDNOW summary that ships with `lifetimes`
    (tests/fixtures/cdnow_summary.csv, the same file), penalizer 0.

usage: .venv/bin/python tests/reference/lifetimes_fixtures.py
"""

import json
import pathlib

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from scipy.special import hyp2f1

ROOT = pathlib.Path(__file__).resolve().parents[2]
out = {}

bg = BetaGeoFitter()
bg.params_ = pd.Series({"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})
cases = [  # x, t_x, T
    (0, 0.0, 38.86), (1, 1.71, 38.86), (2, 30.43, 38.86), (7, 35.0, 38.0),
    (4, 12.0, 12.0), (25, 30.0, 39.0), (2000, 300.0, 310.0), (5000, 400.0, 400.0),
]
rows = []
for x, t_x, T in cases:
    ll = -BetaGeoFitter._negative_log_likelihood(
        np.log([0.243, 4.414 * 1.0, 0.793, 2.426]), np.array([x]), np.array([t_x]),
        np.array([T]), np.array([1.0]), 0.0)
    rows.append({
        "x": x, "t_x": t_x, "T": T, "log_likelihood": float(np.ravel(ll)[0]),
        "p_alive": float(np.ravel(bg.conditional_probability_alive(x, t_x, T))[0]),
        "expected_10": float(np.ravel(bg.conditional_expected_number_of_purchases_up_to_time(10, x, t_x, T))[0]),
        "expected_52": float(np.ravel(bg.conditional_expected_number_of_purchases_up_to_time(52, x, t_x, T))[0]),
    })
out["bgnbd"] = {"params": dict(bg.params_), "cases": rows}

out["hyp2f1"] = [
    {"a": a, "b": b, "c": c, "z": z, "value": float(hyp2f1(a, b, c, z))}
    for a, b, c, z in [(0.243 + 2, 2.426 + 2, 0.793 + 2.426 + 1, 0.2), (1.5, 2.5, 4.0, 0.9),
                       (0.243 + 25, 2.426 + 25, 0.793 + 2.426 + 24, 0.5), (3.0, 0.5, 1.2, 0.05)]
]

gg = GammaGammaFitter()
p, q, v = 6.25, 3.74, 15.44
gg.params_ = pd.Series({"p": p, "q": q, "v": v})
spend = [(1, 20.0), (2, 35.5), (7, 12.0), (30, 80.25)]
out["gamma_gamma"] = {
    "params": {"p": p, "q": q, "v": v},
    "cases": [{
        "x": x, "m": m,
        "log_likelihood": float(-GammaGammaFitter._negative_log_likelihood(
            np.log([p, q, v]), np.array([x]), np.array([m]), np.array([1.0]), 0.0)),
        "expected_order_value": float(np.ravel(gg.conditional_expected_average_profit(x, m))[0]),
    } for x, m in spend],
}

cdnow = pd.read_csv(ROOT / "tests/fixtures/cdnow_summary.csv")
bgf = BetaGeoFitter(penalizer_coef=0.0).fit(cdnow["x"], cdnow["t_x"], cdnow["T"])
repeat = cdnow[(cdnow["x"] > 0) & (cdnow["zbar"] > 0)]
ggf = GammaGammaFitter(penalizer_coef=0.0).fit(repeat["x"], repeat["zbar"])
out["cdnow"] = {
    "bgnbd": {k: float(v) for k, v in bgf.params_.items()},
    # In the data's own time unit (weeks); lifetimes' stored value is in its scaled time.
    "bgnbd_log_likelihood": float(-BetaGeoFitter._negative_log_likelihood(
        np.log(bgf.params_.values), cdnow["x"].values, cdnow["t_x"].values, cdnow["T"].values,
        np.ones(len(cdnow)), 0.0) * len(cdnow)),
    "gamma_gamma": {k: float(v) for k, v in ggf.params_.items()},
    "p_alive_first": float(np.ravel(bgf.conditional_probability_alive(cdnow["x"][0], cdnow["t_x"][0], cdnow["T"][0]))[0]),
}
path = ROOT / "tests/fixtures/lifetimes_expected.json"
path.write_text(json.dumps(out, indent=2) + "\n")
print(f"wrote {path}")
