//! Loopback stand-ins for what cannot run here: the managed-identity endpoints, an
//! Exchange Online tenant, Microsoft Graph for its directory and a Key Vault. Faithful to
//! the documented protocols and checking what the real services check; used by tests,
//! benchmarks and `serve --simulate`. Binds 127.0.0.1 only.

pub mod exchange;
pub mod graph;
pub mod identity;
pub mod jwt;
pub mod keyvault;
pub mod loopback;
