//! The connection layers: the project's own HTTP/1.1 layer (`native`, with its protocol in
//! `protocol` and the `Date` header in `date`) and the may_minihttp adapter (`minihttp`).
//!
//! Both turn bytes into a [`crate::request::Request`], hand it to the routes and write the
//! [`crate::reply::Reply`] they get back; neither value knows which engine carried it, so a
//! connection layer can be swapped without touching the routes.

pub mod date;
pub mod minihttp;
pub mod native;
pub mod protocol;
