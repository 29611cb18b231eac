//! strata-csi
