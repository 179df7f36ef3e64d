"""Time Python's `lifetimes` doing what the `clv` stage does, on the same customer summary.

usage: lifetimes_clv.py CUSTOMER_FACTS.parquet CLV_MODEL.parquet
Fits BG/NBD (weeks) and Gamma-Gamma, then scores p_alive, expected purchases over 12 months
and 12-month CLV discounted at 10 %/year (monthly), margin 0.3; prints seconds and the
parameters next to the pipeline's.
"""

import json
import sys
import time

import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter

facts = pd.read_parquet(sys.argv[1], columns=["frequency", "t_x", "T", "monetary_value"])
ours = pd.read_parquet(sys.argv[2])
weeks = facts.assign(t_x=facts["t_x"] / 7.0, T=facts["T"] / 7.0)

start = time.perf_counter()
bgf = BetaGeoFitter(penalizer_coef=0.0).fit(weeks["frequency"], weeks["t_x"], weeks["T"])
repeat = weeks[(weeks["frequency"] > 0) & (weeks["monetary_value"] > 0)]
ggf = GammaGammaFitter(penalizer_coef=0.0).fit(repeat["frequency"], repeat["monetary_value"])
fitted = time.perf_counter()
p_alive = bgf.conditional_probability_alive(weeks["frequency"], weeks["t_x"], weeks["T"])
expected = bgf.conditional_expected_number_of_purchases_up_to_time(
    12 * 365.25 / 12 / 7, weeks["frequency"], weeks["t_x"], weeks["T"])
clv = ggf.customer_lifetime_value(
    bgf, weeks["frequency"], weeks["t_x"], weeks["T"], weeks["monetary_value"],
    time=12, discount_rate=1.1 ** (1 / 12) - 1, freq="W") * 0.3
done = time.perf_counter()

params = {f"bgnbd.{k}": float(v) for k, v in bgf.params_.items()}
params.update({f"gamma_gamma.{k}": float(v) for k, v in ggf.params_.items()})
pipeline = {f"{m}.{p}": float(v) for m, p, v in zip(ours["model"], ours["parameter"], ours["value"])}
print(json.dumps({
    "customers": len(weeks),
    "fit_seconds": fitted - start,
    "score_seconds": done - fitted,
    "total_seconds": done - start,
    "parameters": {k: {"lifetimes": v, "pipeline": pipeline.get(k)} for k, v in params.items()},
    "mean_clv": float(clv.mean()),
}, indent=2))
