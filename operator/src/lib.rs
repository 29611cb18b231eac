//! strata-operator
