//! From where: everything the gateway learns about the other end of a request.
//!
//! * [`vector`]: the client IP through trusted proxies, the device ID and the request ID;
//! * [`geoip`]: country, city and ASN of the client IP (MaxMind DB files, reloaded when they
//!   change);
//! * [`tls`]: the TLS listener's certificates and the client certificate it verified.

pub mod geoip;
pub mod tls;
pub mod vector;
