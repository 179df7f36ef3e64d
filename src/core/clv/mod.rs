//! Probabilistic CLV models: numbers in, numbers out, no I/O.
//!
//! `bgnbd` (purchase counts and dropout), `gamma_gamma` (spend), `hyp2f1` (the Gauss
//! hypergeometric function the BG/NBD expectation needs), `optimize` (argmin L-BFGS from several
//! starts, Hessians for standard errors).

pub mod bgnbd;
pub mod gamma_gamma;
pub mod hyp2f1;
pub mod optimize;

/// ln Γ(x) for x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    special::Gamma::ln_gamma(x).0
}

/// ψ(x) = d ln Γ(x) / dx.
pub fn digamma(x: f64) -> f64 {
    special::Gamma::digamma(x)
}

/// ψ₁(x) = d² ln Γ(x) / dx².
pub fn trigamma(x: f64) -> f64 {
    special::Gamma::trigamma(&x)
}

#[cfg(test)]
mod lifetimes_agreement;

#[cfg(test)]
mod recovery;
