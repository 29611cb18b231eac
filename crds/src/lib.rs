//! strata-crds
