//! strata-e2e
