//! Dockerfile builds, the part that needs no container: the Dockerfile parser and its
//! word expansion ([`dockerfile`]), `.dockerignore` patterns ([`ignore`]) and the
//! build context on disk ([`context`]). The steps themselves (FROM, RUN in a
//! container, COPY into a layer, commits, the cache) run in the Docker front end's
//! builder (`crate::docker::build`), which owns the containers they need.

pub mod context;
pub mod dockerfile;
pub mod ignore;
pub mod index;
pub mod shell;

/// A directory of a unit test's own, removed with the value.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("wharf-{name}-"))
        .tempdir()
        .expect("a temporary directory")
}
