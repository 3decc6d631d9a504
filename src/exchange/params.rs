//! Cmdlet parameter values, as the caller hands them to [`super`]. Encoding them into the
//! InvokeCommand JSON is this module's job alone.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// One parameter value of a cmdlet call.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Null,
    /// Booleans and switches (`-Archive` is `Archive = true`).
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// Sent as UTC without `Z`, as the module does.
    DateTime(DateTime<Utc>),
    Array(Vec<ParamValue>),
    /// A PowerShell hashtable (`@{Add='smtp:…'}`).
    HashTable(BTreeMap<String, ParamValue>),
}

/// Named parameters of one cmdlet call.
pub type Parameters = BTreeMap<String, ParamValue>;
