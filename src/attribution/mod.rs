//! Which patients: what the bodies of a request and its response say, beyond the route rules.
//!
//! * [`config`]: `[attribution]`, the bounds of the buffered path;
//! * [`extract`]: the patients a FHIR JSON body references, in one streaming pass;
//! * [`body`]: whether and how a body is read (media type, content encoding, Bundle entries);
//! * [`settle`]: the record's patient list, attribution and gaps from all of that;
//! * [`explain`]: `rules explain` and `rules test`, the same steps without a network.
//!
//! The buffered exchange that feeds these (reading the client's body, fetching the EHR's
//! answer, journaling before release) is the proxy's: [`crate::proxy`].

pub mod body;
pub mod config;
pub mod explain;
pub mod extract;
pub mod settle;

#[cfg(test)]
mod tests;
