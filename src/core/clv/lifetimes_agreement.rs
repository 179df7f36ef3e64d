//! Agreement with Python's `lifetimes` (values computed once by
//! tests/reference/lifetimes_fixtures.py into tests/fixtures/lifetimes_expected.json), and
//! fitted parameters on the CDNOW summary that ships with `lifetimes`.

use std::path::Path;

use super::{bgnbd, gamma_gamma, hyp2f1};

fn expected() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lifetimes_expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let scale = expected.abs().max(1e-300);
    assert!(
        (actual - expected).abs() <= tolerance * scale || (actual - expected).abs() < 1e-300,
        "{what}: expected {expected:e}, got {actual:e} (relative {:e})",
        (actual - expected).abs() / scale
    );
}

fn number(value: &serde_json::Value) -> f64 {
    value.as_f64().unwrap()
}

#[test]
fn bgnbd_likelihood_p_alive_and_expectation_match_lifetimes() {
    let expected = expected();
    let p = &expected["bgnbd"]["params"];
    let params = bgnbd::Params {
        r: number(&p["r"]),
        alpha: number(&p["alpha"]),
        a: number(&p["a"]),
        b: number(&p["b"]),
    };
    for case in expected["bgnbd"]["cases"].as_array().unwrap() {
        let (x, t_x, t) = (
            case["x"].as_u64().unwrap() as u32,
            number(&case["t_x"]),
            number(&case["T"]),
        );
        let what = format!("x={x} t_x={t_x} T={t}");
        close(
            bgnbd::log_likelihood(&params, x, t_x, t),
            number(&case["log_likelihood"]),
            1e-9,
            &format!("ll {what}"),
        );
        close(
            bgnbd::p_alive(&params, x, t_x, t),
            number(&case["p_alive"]),
            1e-6,
            &format!("p_alive {what}"),
        );
        for (horizon, key) in [(10.0, "expected_10"), (52.0, "expected_52")] {
            let value = bgnbd::expected_purchases(&params, horizon, x, t_x, t).unwrap();
            close(value, number(&case[key]), 1e-6, &format!("{key} {what}"));
        }
        for (horizon, key) in [(10.0, "p_zero_10"), (52.0, "p_zero_52")] {
            let value = bgnbd::p_no_purchases(&params, horizon, x, t_x, t);
            assert!((0.0..=1.0).contains(&value), "{key} {what}: {value}");
            // lifetimes overflows for heavy buyers (null in the fixture): the closed form only.
            if let Some(reference) = case[key].as_f64() {
                close(value, reference, 1e-6, &format!("{key} {what}"));
            }
        }
    }
}

#[test]
fn hyp2f1_matches_scipy() {
    for case in expected()["hyp2f1"].as_array().unwrap() {
        let (a, b, c, z) = (
            number(&case["a"]),
            number(&case["b"]),
            number(&case["c"]),
            number(&case["z"]),
        );
        let value = hyp2f1::ln_hyp2f1(a, b, c, z).unwrap().exp();
        close(value, number(&case["value"]), 1e-9, &format!("2F1({a}, {b}; {c}; {z})"));
    }
}

#[test]
fn gamma_gamma_likelihood_and_order_value_match_lifetimes() {
    let expected = expected();
    let p = &expected["gamma_gamma"]["params"];
    let params = gamma_gamma::Params {
        p: number(&p["p"]),
        q: number(&p["q"]),
        v: number(&p["v"]),
    };
    for case in expected["gamma_gamma"]["cases"].as_array().unwrap() {
        let (x, m) = (number(&case["x"]), number(&case["m"]));
        close(
            gamma_gamma::log_likelihood(&params, x, m),
            number(&case["log_likelihood"]),
            1e-9,
            "gg ll",
        );
        close(
            gamma_gamma::expected_order_value(&params, x, m).unwrap(),
            number(&case["expected_order_value"]),
            1e-9,
            "gg value",
        );
    }
}

/// The CDNOW summary shipped with `lifetimes`: (x, t_x, T, zbar) per customer.
fn cdnow() -> Vec<(u32, f64, f64, f64)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cdnow_summary.csv"))
        .unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<f64> = line.split(',').map(|f| f.parse().unwrap()).collect();
            (fields[1] as u32, fields[2], fields[3], fields[4])
        })
        .collect()
}

#[test]
fn cdnow_fits_agree_with_lifetimes_to_three_significant_digits() {
    let expected = expected();
    let rows = cdnow();
    assert_eq!(rows.len(), 2357);
    let x: Vec<u32> = rows.iter().map(|r| r.0).collect();
    let t_x: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let t: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let fit = bgnbd::fit(&bgnbd::Patterns::compress(&x, &t_x, &t), 0.0).unwrap();
    assert!(fit.converged);
    let want = &expected["cdnow"]["bgnbd"];
    let got = fit.params;
    for (name, value) in [("r", got.r), ("alpha", got.alpha), ("a", got.a), ("b", got.b)] {
        close(value, number(&want[name]), 5e-4, &format!("CDNOW BG/NBD {name}"));
    }
    close(
        fit.log_likelihood,
        number(&expected["cdnow"]["bgnbd_log_likelihood"]),
        1e-6,
        "CDNOW log-likelihood",
    );
    let errors = fit.std_errors.expect("the Hessian is invertible at the CDNOW optimum");
    assert!(errors.iter().all(|e| *e > 0.0 && e.is_finite()), "{errors:?}");

    let spend = gamma_gamma::Spend {
        x: rows
            .iter()
            .filter(|r| r.0 > 0 && r.3 > 0.0)
            .map(|r| r.0 as f64)
            .collect(),
        m: rows.iter().filter(|r| r.0 > 0 && r.3 > 0.0).map(|r| r.3).collect(),
        weight: vec![1.0; rows.iter().filter(|r| r.0 > 0 && r.3 > 0.0).count()],
    };
    let spend_fit = gamma_gamma::fit(&spend, 0.0).unwrap();
    assert!(spend_fit.converged);
    let want = &expected["cdnow"]["gamma_gamma"];
    let got = spend_fit.params;
    for (name, value) in [("p", got.p), ("q", got.q), ("v", got.v)] {
        close(value, number(&want[name]), 5e-4, &format!("CDNOW Gamma-Gamma {name}"));
    }
}
