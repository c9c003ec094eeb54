//! What the end-to-end run reads from a live proxy and server: the proxy's address and a copy
//! of every body the server received.

use stainedglass_serve::embeddings::EmbeddingLimits;

use crate::quickstart::services::Services;

/// A proxy in front of a server that keeps a copy of every body it receives.
pub trait Tapped {
    fn proxy(&self) -> std::net::SocketAddr;
    fn received(&self) -> Vec<Vec<u8>>;
    fn limits(&self) -> EmbeddingLimits;
}

impl Tapped for Services {
    fn proxy(&self) -> std::net::SocketAddr {
        self.proxy_addr
    }
    fn received(&self) -> Vec<Vec<u8>> {
        Services::received(self)
    }
    fn limits(&self) -> EmbeddingLimits {
        Services::limits(self)
    }
}
